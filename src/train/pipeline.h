// The pipeline executor: walks this stage's schedule table (parallel/schedule.h) with
// point-to-point messages over the PP group (specs/parallelism-and-moe.md §4). Activations go to
// the next virtual stage, gradients to the previous one (rank P-1's chunk v feeds rank 0's chunk
// v+1: a ring). Sends are non-blocking and complete before their buffers are reused; receives block; each
// message's tag names (micro-batch, destination virtual stage, direction), so messages never
// mismatch and the table order alone rules out deadlock (the schedule tests simulate it).
// With one stage it simply runs the micro-batches one after the other.
#pragma once
#include <memory>
#include <vector>

#include "models/decoder_lm.h"
#include "parallel/grid.h"
#include "train/objective.h"

namespace ff {

struct PipelineResult {
  double loss = 0;                  // the objective's contributions summed over the micro-batches (every rank receives it)
  int64_t tokens = 0;               // rows with a target, over the micro-batches
  double aux_loss = 0, z_loss = 0;  // means over the micro-batches, summed over layers and stages
  int64_t routed_slots = 0, dropped_slots = 0;
  std::vector<int64_t> expert_load;  // rows per expert of this stage's MoE layers, in layer order
  double forward_s = 0, backward_s = 0;  // compute time of this stage (waiting excluded)
};

// Micro-batch activation records stage p keeps alive at once (what its memory holds): W + 1 under
// 1F1B (W its warm-up forwards), M under the interleaved schedule.
int64_t micro_batch_records(int64_t P, int64_t p, int64_t M, int64_t V);

class PipelineExecutor {
 public:
  PipelineExecutor(DecoderLM& model, const ParallelGrid& grid, int64_t micro_batches);
  // One step's forward and backward over the micro-batches tokens[m] / targets[m] ([B*S] each;
  // every stage gets them). The last stage evaluates the objective on each micro-batch after its
  // forward. The gradients of the objective (the step's loss, whole: its contributions are summed,
  // so it normalises itself, e.g. by the step's tokens) and of the MoE losses (the mean over the
  // micro-batches) accumulate into the parameters, scaled for the data-parallel reduction, which
  // averages over the replicas: this replica's share of the objective counts DP times.
  // positions: per micro-batch [B*S] (packed examples); null or empty entries: 0 .. S-1.
  PipelineResult run(const std::vector<std::vector<int32_t>>& tokens, const std::vector<std::vector<int32_t>>& targets,
                     int64_t B, int64_t S, const TokenObjective& objective,
                     const std::vector<std::vector<int32_t>>* positions = nullptr);
  // The same with a distribution objective. When it names a companion model (a distillation
  // teacher: frozen, on the same grid, its layers over the same P x V virtual stages), each stage
  // runs the companion's forward of a chunk right after the model's, its activations passed on
  // their own tags, and the last stage hands the companion's logits to the objective. The
  // companion keeps one record per model record (its sends complete with the model's).
  PipelineResult run(const std::vector<std::vector<int32_t>>& tokens, const std::vector<std::vector<int32_t>>& targets,
                     int64_t B, int64_t S, const LogitObjective& objective,
                     const std::vector<std::vector<int32_t>>* positions = nullptr);
  // The objective on one micro-batch, forward only (validation, eval); every rank receives it.
  ObjectiveValue evaluate(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets, int64_t B,
                          int64_t S, const TokenObjective& objective, const std::vector<int32_t>* positions = nullptr);

 private:
  PipelineResult run_step(const std::vector<std::vector<int32_t>>& tokens,
                          const std::vector<std::vector<int32_t>>& targets, int64_t B, int64_t S,
                          const TokenObjective* token_objective, const LogitObjective* logit_objective,
                          const std::vector<std::vector<int32_t>>* positions);
  void prepare_companion(DecoderLM* companion);
  DecoderLM& model_;
  const ParallelGrid& grid_;
  int64_t M_;
  std::vector<std::unique_ptr<DecoderLM::MicroBatch>> micro_batches_;  // micro-batch m uses m % size
  std::vector<std::vector<float>> activations_, gradients_;  // received, per (record, chunk)
  std::vector<std::vector<float>> dlogp_;                     // the objective's gradient, per record
  std::vector<std::vector<float>> dlogits_;                   // a distribution objective's, per record
  std::vector<std::vector<float>> dhidden_;                   // its gradient of the head's hidden state
  std::vector<std::vector<MPI_Request>> sends_;               // per record, not yet completed
  DecoderLM* companion_ = nullptr;                            // the last run's, with its records
  std::vector<std::unique_ptr<DecoderLM::MicroBatch>> companion_records_;
  std::vector<std::vector<float>> companion_activations_;     // received, per (record, chunk)
};

}  // namespace ff
