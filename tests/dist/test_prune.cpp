// Pruning importance under a parallel layout (specs/methods.md §3.5): the statistics of the
// calibration forwards, gathered over the TP slices, SP rows, CP chunks and DP replicas, equal
// those of one process that runs every replica's batch.
#include <gtest/gtest.h>

#include <cmath>

#include "invariance.h"
#include "models/decoder_lm.h"

namespace ff {
namespace {

using namespace test;

void expect_importance_invariant(const ModelConfig& cfg, const ParallelConfig& pc) {
  SCOPED_TRACE(strprintf("tp %lld (sp %d) cp %lld ep %lld", (long long)pc.tp, int(pc.sequence_parallel), (long long)pc.cp,
                         (long long)pc.ep));
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 11), ref(cfg, one, 11);
  ImportanceStats got, want;
  model.declare_importance(got);
  ref.declare_importance(want);
  const int64_t B = 2, DP = grid.dp_size();
  auto mb = model.new_micro_batch(), ref_mb = ref.new_micro_batch();
  for (int64_t step = 0; step < 2; ++step) {
    Batch b = micro_batch(step, grid.dp().rank(), B, cfg);
    model.forward(*mb, b.tokens.data(), nullptr, B, cfg.seq_len);
    model.add_importance(*mb, got);
    got.end_batch();
    for (int64_t d = 0; d < DP; ++d) {
      Batch rb = micro_batch(step, d, B, cfg);
      ref.forward(*ref_mb, rb.tokens.data(), nullptr, B, cfg.seq_len);
      ref.add_importance(*ref_mb, want);
    }
    want.end_batch();
  }
  got.finish(world);
  want.finish(self);
  for (const auto& [name, acc] : want.raw()) {
    const auto& g = got.raw().at(name);
    double scale = 0;
    for (double v : acc) scale = std::max(scale, v);
    // fp32 activations in other summation orders (TP's partial sums, SP's gathers): relative 1e-5
    // of each entry's largest value, squared statistics 2e-5.
    for (size_t f = 0; f < acc.size(); ++f) ASSERT_NEAR(g[f], acc[f], 2e-5 * scale + 1e-12) << name << " channel " << f;
    if (name.find("layernorm") != std::string::npos) {
      EXPECT_NEAR(got.mean(name), want.mean(name), 1e-5 * std::fabs(want.mean(name)) + 1e-9) << name;
    }
  }
}

TEST(PruneImportance, EqualsOneProcessUnderEveryLayout) {
  expect_importance_invariant(tiny_hybrid(), layout(1));               // DP over all ranks
  expect_importance_invariant(tiny_hybrid(), tensor_layout(2, false));  // TP: head and neuron slices
  expect_importance_invariant(tiny_hybrid(), tensor_layout(2, true));   // + SP: rows of the stream
  ParallelConfig cp;
  cp.cp = 2;
  expect_importance_invariant(tiny_hybrid(), cp);                       // CP: chunks, Mamba's share
  expect_importance_invariant(tiny_hybrid(true), layout(max_ep()));     // a hybrid MoE under EP
  expect_importance_invariant(tiny_hybrid(true), tensor_layout(2, true));
}

}  // namespace
}  // namespace ff
