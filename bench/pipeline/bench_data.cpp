// Data-pipeline benchmarks (Google Benchmark): building the GPT dataset's indices, and reading
// samples through the shuffle index (random access into the memory-mapped .bin), on an indexed
// dataset named by FF_BENCH_DATA (default data/kjv-sp4096, made by the default training job).
//   ./build/fivefold_data_bench
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>

#include "io/gpt_dataset.h"

namespace {

std::string data_prefix() {
  const char* p = std::getenv("FF_BENCH_DATA");
  return p ? p : "data/kjv-sp4096";
}

ff::GptDatasetOptions options(int64_t seq_len, int64_t samples) {
  ff::GptDatasetOptions o;
  o.seq_len = seq_len;
  o.num_samples = samples;
  o.seed = 1;
  o.vocab_size = 1 << 30;
  o.use_cache = false;
  return o;
}

void BM_GptIndexBuild(benchmark::State& state) {
  if (!std::filesystem::exists(data_prefix() + ".idx")) return state.SkipWithError("no dataset; run the default job");
  auto ds = std::make_shared<const ff::IndexedDataset>(data_prefix());
  auto o = options(256, state.range(0));
  o.documents = {0, ds->num_documents()};
  for (auto _ : state) {
    ff::GptDataset g(ds, o);
    benchmark::DoNotOptimize(g.size());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));  // samples indexed
}
BENCHMARK(BM_GptIndexBuild)->Arg(100000)->Unit(benchmark::kMillisecond);

void BM_GptSampleRead(benchmark::State& state) {
  if (!std::filesystem::exists(data_prefix() + ".idx")) return state.SkipWithError("no dataset; run the default job");
  auto ds = std::make_shared<const ff::IndexedDataset>(data_prefix());
  const int64_t L = state.range(0);
  auto o = options(L, 200000);
  o.documents = {0, ds->num_documents()};
  ff::GptDataset g(ds, o);
  std::vector<int32_t> buf(static_cast<size_t>(L + 1));
  int64_t i = 0;
  for (auto _ : state) {
    g.get(i, buf.data());
    benchmark::DoNotOptimize(buf.data());
    i = (i + 1) % g.size();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * (L + 1) * 4);
}
BENCHMARK(BM_GptSampleRead)->Arg(256)->Arg(4096);

}  // namespace

BENCHMARK_MAIN();
