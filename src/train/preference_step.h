// Training on preference pairs (train/preference_objective.h) around the pipeline executor: the
// reference's per-sequence log-probs computed once per micro-batch before the policy's step (the
// DPO family), the step's pair count over the DP replicas, and the pair statistics summed over
// the pipeline stages and replicas.
//
// The reference (a recipe's second model, DESIGN decision 14): train.reference if given, a frozen
// role loaded from it; else, under LoRA, the policy itself with its adapters off (no second copy
// of the weights); else a frozen role loaded from train.init_from.
#pragma once
#include <memory>
#include <vector>

#include "train/config.h"
#include "train/model_role.h"
#include "train/pipeline.h"
#include "train/preference_objective.h"

namespace ff {

class PreferenceTraining {
 public:
  PreferenceTraining(const RunConfig& cfg, ModelRole& policy, PipelineExecutor& policy_pipeline,
                     const ParallelGrid& grid);
  // One step's forward and backward of the policy (tokens etc. as PipelineExecutor::run; rewards
  // per micro-batch, or empty entries). stats: the step's pair statistics, whole (every rank).
  PipelineResult step(const std::vector<std::vector<int32_t>>& tokens, const std::vector<std::vector<int32_t>>& targets,
                      int64_t B, int64_t S, const std::vector<std::vector<int32_t>>* positions,
                      const std::vector<std::vector<float>>& rewards, PairStats& stats);
  // One validation micro-batch, forward only: the summed loss of its pairs (stats.pairs of them).
  double evaluate(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets, int64_t B, int64_t S,
                  const std::vector<int32_t>* positions, const std::vector<float>& rewards, PairStats& stats);
  // What the reference is, for the log, and the bytes of weights it adds to each rank (0 when it
  // is the LoRA policy's own base).
  std::string describe() const;
  int64_t reference_bytes() const;

 private:
  bool needs_reference() const { return options_.kind != Objective::bradley_terry; }
  std::vector<double> reference_logps(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                                      int64_t B, int64_t S, const std::vector<int32_t>* positions);
  PairStats whole(const PairStats& mine) const;  // summed over PP and DP

  PairwiseOptions options_;
  ModelRole& policy_;
  PipelineExecutor& policy_pipeline_;
  const ParallelGrid& grid_;
  std::unique_ptr<ModelRole> reference_;              // a frozen role; null: the policy with adapters off
  std::unique_ptr<PipelineExecutor> reference_pipeline_;
  std::string reference_source_;
};

}  // namespace ff
