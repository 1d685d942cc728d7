#include "train/evaluate.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <span>

#include "io/progress.h"
#include "train/data.h"
#include "train/model_source.h"
#include "train/objective.h"
#include "train/pipeline.h"

namespace ff {

EvalResult run_eval(const EvalOptions& o, const ParallelGrid& grid, bool quiet) {
  FF_CHECK(o.micro_batch >= 1, "--micro_batch %lld: must be >= 1", (long long)o.micro_batch);
  FF_CHECK(o.seq_len >= 0 && o.max_windows >= 0, "--seq_len and --max_windows must be >= 0");
  const ModelSource src = open_model_source(o.model);
  RunConfig c = src.config;
  c.parallel = grid.config();
  if (o.seq_len > 0) c.model.seq_len = o.seq_len;
  const TokenizerFile tok = model_tokenizer(src, o.tokenizer);
  c.train.tokenizer_type = tok.type;
  // Data is prepared with a file of the tokenizer's bytes (so a model's own tokenizer is used and
  // the prepared data is keyed by its content), beside the data.
  c.train.tokenizer_path = tok.type == TokenizerType::byte ? "" :
      (o.tokenizer ? tok.name : materialise_tokenizer(tok, std::filesystem::path(o.data).parent_path().string() + "/.fivefold",
                                                     grid.all()));
  c.train.data_path = o.data;
  c.train.json_key = o.json_key;
  c.train.split = o.split;
  const auto problems = layout_problems(c.model, c.parallel);
  FF_CHECK(problems.empty(), "this model cannot use this parallel layout:%s", join_problems(problems).c_str());
  const bool lead = grid.world_rank() == 0;
  EvalData data = open_eval_data(c, o.part, grid.all(), quiet || !lead);

  DecoderLM model(c.model, grid, c.train.seed);
  load_model_source(src, model);
  PipelineExecutor pipe(model, grid, 1);
  const int64_t B = o.micro_batch, S = c.model.seq_len, DP = grid.dp_size(), r = grid.dp().rank();
  const int64_t windows = o.max_windows > 0 ? std::min(o.max_windows, data.samples) : data.samples;
  FF_CHECK(windows > 0, "'%s' holds fewer than %lld + 1 tokens in the part evaluated: nothing to evaluate",
           o.data.c_str(), (long long)S);
  if (lead && !quiet) std::printf("eval: %s\n%s\n", src.path.c_str(), data.summary.c_str());
  const TokenMeanCrossEntropy nll_sum(1.0);
  std::vector<int32_t> tokens(static_cast<size_t>(B * S)), targets(tokens.size()), buf(static_cast<size_t>(S + 1));
  double sums[3] = {0, 0, 0};  // nll, tokens, bytes (this replica's windows)
  // Micro-batch k of the job covers windows [k B DP, (k + 1) B DP); replica r takes its B of them.
  const int64_t steps = (windows + B * DP - 1) / (B * DP);
  Progress progress("eval", windows, ProgressUnit::count, "windows", printing(o.progress && lead && !quiet));
  for (int64_t k = 0; k < steps; ++k) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t w = (k * DP + r) * B + b;
      int32_t* t = tokens.data() + b * S;
      int32_t* y = targets.data() + b * S;
      if (w >= windows) {  // padding: no targets
        std::fill(t, t + S, 0);
        std::fill(y, y + S, -1);
        continue;
      }
      data.windows->get_unshuffled(w, buf.data());
      std::copy(buf.begin(), buf.end() - 1, t);
      std::copy(buf.begin() + 1, buf.end(), y);
      if (grid.tp().rank() == 0 && grid.cp().rank() == 0 && grid.pp().rank() == 0)  // count each window's bytes once
        sums[2] += static_cast<double>(data.tokenizer->decode(std::span<const int32_t>(y, static_cast<size_t>(S))).size());
    }
    const ObjectiveValue v = pipe.evaluate(tokens, targets, B, S, nll_sum);
    if (grid.tp().rank() == 0 && grid.cp().rank() == 0 && grid.pp().rank() == 0) {
      sums[0] += v.loss;
      sums[1] += static_cast<double>(v.tokens);
    }
    progress.advance(std::min(B * DP, windows - k * B * DP));
  }
  progress.finish();
  grid.all().all_reduce_sum(sums, 3);
  EvalResult res;
  res.windows = windows;
  res.tokens = static_cast<int64_t>(sums[1]);
  res.bytes = static_cast<int64_t>(sums[2]);
  res.loss = res.tokens > 0 ? sums[0] / sums[1] : 0.0;
  res.perplexity = std::exp(res.loss);
  res.bits_per_byte = res.bytes > 0 ? sums[0] / std::log(2.0) / sums[2] : 0.0;
  return res;
}

}  // namespace ff
