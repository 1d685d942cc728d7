// One model of a recipe (DESIGN decision 14): a DecoderLM on the job's grid under a role name
// ("model", "teacher", "reference", "critic", ...), either trainable with its own optimizer or
// frozen. A recipe owns as many as it needs; each trainable one is saved in checkpoints under its
// role (io/checkpoint.h), a frozen one is loaded again from its source.
//
// The optimizer is AdamW, or the distributed AdamW (ZeRO-1) when optim.distributed; either way
// one step is: tied-embedding sync over PP, the gradient reduction over DP (and expert-DP), the
// clipped update, the routers' expert-bias update, and the bf16 weight copies marked stale.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "models/decoder_lm.h"
#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "parallel/grid.h"

namespace ff {

class ModelRole {
 public:
  // A trainable model; parameters matching the `frozen` globs excepted (no gradient, no state);
  // with the recipe's training-only parameters (extras).
  ModelRole(std::string role, const ModelConfig& cfg, const OptimizerConfig& optim, const ParallelGrid& grid,
            uint64_t seed, const std::vector<std::string>& frozen = {}, const TrainingExtras& extras = {});
  // A frozen model: every parameter frozen, no optimizer.
  ModelRole(std::string role, const ModelConfig& cfg, const ParallelGrid& grid, uint64_t seed);
  ModelRole(const ModelRole&) = delete;
  ModelRole& operator=(const ModelRole&) = delete;

  const std::string& role() const { return role_; }
  DecoderLM& model() { return *model_; }
  const DecoderLM& model() const { return *model_; }
  bool trainable() const { return adam_ != nullptr || distributed_ != nullptr; }

  // After the backward of a step's micro-batches: one optimizer step at learning rate lr (every
  // rank of the grid calls it). Returns the pre-clip global gradient norm.
  double optimizer_step(double lr);
  int64_t optimizer_steps() const;
  // Bytes of Adam moments this rank holds.
  int64_t optimizer_state_bytes() const;

  // Checkpoints (collective over the grid when the optimizer is distributed: the sharded moments
  // are gathered whole for a save and scattered after a load). checkpoint_contents() is valid
  // until end_save() / end_load().
  CheckpointContents begin_save();
  void end_save();
  CheckpointContents begin_load();
  void end_load(int64_t optimizer_steps);

 private:
  CheckpointContents contents();
  std::string role_;
  const ParallelGrid& grid_;
  std::unique_ptr<DecoderLM> model_;
  std::unique_ptr<AdamW> adam_;                    // optim.distributed = false
  std::unique_ptr<DistributedAdamW> distributed_;  // optim.distributed = true
  std::vector<float> staging_m_, staging_v_;       // whole moments while a distributed save or load runs
};

}  // namespace ff
