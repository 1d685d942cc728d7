// The invariance harness of the distributed tests (DESIGN decision 5): a layout's losses,
// gradients and values after optimizer steps against one process that runs the same micro-batches
// with gradient accumulation. Tolerances are derived in invariance_harness.cpp.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "invariance.h"
#include "models/decoder_lm.h"
#include "train/pipeline.h"

namespace ff::test {

// How many times the fp32 tolerances a run of this precision is held to (bf16: 300).
double tolerance_scale(const ModelConfig& cfg);

using ModelSetup = std::function<void(DecoderLM&)>;

// One micro-batch of B sequences per DP replica per step, against the reference accumulating
// the DP replicas' micro-batches. Returns this rank's last forward result (for layout-specific
// assertions). distributed: the parallel model uses the distributed optimizer (ZeRO-1); its
// reduced gradients never exist whole, so the parameters after each step are compared instead.
// frozen: globs of parameters frozen in both models. steps: optimizer steps compared; 0 = 3 under
// fp32 and 1 under bf16.
ForwardResult expect_invariant(const ModelConfig& cfg, const ParallelConfig& pc, const ModelSetup& setup = {},
                               bool distributed = false, const std::vector<std::string>& frozen = {},
                               int64_t steps = 0, int64_t B = 2);

// Pipeline parallelism: the same with M micro-batches per DP replica, run by the pipeline executor
// over the stages; the reference accumulates all DP x M micro-batches.
void expect_pipeline_invariant(const ModelConfig& cfg, const ParallelConfig& pc, int64_t M);

// Runs one step of `model` with `run` on this replica's M = 2 micro-batches of B = 2 sequences
// (micro-batch k of the step is batch(k)), and `run` on `ref` over all of them as one micro-batch;
// compares the loss (summed over the replicas) and every gradient. `run` gets the step's valid
// targets (the global token count) and whether it runs the reference. per_micro_batch: the
// reference runs the DP x M micro-batches one after the other instead (for an objective defined
// per micro-batch, as distillation with the LM loss kept).
using RunObjective = std::function<PipelineResult(PipelineExecutor& pipe, const std::vector<std::vector<int32_t>>& tokens,
                                                  const std::vector<std::vector<int32_t>>& targets, int64_t B,
                                                  double total, bool reference)>;
void expect_one_batch_invariant(DecoderLM& model, DecoderLM& ref, const ParallelGrid& grid, const ParallelGrid& one,
                                const std::function<Batch(int64_t)>& batch, const RunObjective& run,
                                bool per_micro_batch = false);

}  // namespace ff::test
