#include "train/model_role.h"

#include "parallel/data_parallel.h"

namespace ff {

ModelRole::ModelRole(std::string role, const ModelConfig& cfg, const OptimizerConfig& optim, const ParallelGrid& grid,
                     uint64_t seed, const std::vector<std::string>& frozen, const TrainingExtras& extras)
    : role_(std::move(role)), grid_(grid), model_(std::make_unique<DecoderLM>(cfg, grid, seed, frozen, extras)) {
  if (optim.distributed)
    distributed_ = std::make_unique<DistributedAdamW>(model_->params(), optim, grid);
  else
    adam_ = std::make_unique<AdamW>(model_->params(), optim);
}

ModelRole::ModelRole(std::string role, const ModelConfig& cfg, const ParallelGrid& grid, uint64_t seed)
    : role_(std::move(role)), grid_(grid),
      model_(std::make_unique<DecoderLM>(cfg, grid, seed, std::vector<std::string>{"*"})) {}

double ModelRole::optimizer_step(double lr) {
  FF_CHECK(trainable(), "model '%s' is frozen: it has no optimizer step", role_.c_str());
  model_->synchronize_tied_embeddings();
  double norm = 0;
  if (distributed_) {
    norm = distributed_->step(lr);
  } else {
    reduce_gradients(model_->params(), grid_);
    norm = adam_->step(lr, grid_.mp(), grid_.expert_mp());
  }
  model_->end_of_step();
  model_->mark_values_changed();
  return norm;
}

int64_t ModelRole::optimizer_steps() const {
  return distributed_ ? distributed_->steps_taken() : adam_ ? adam_->steps_taken() : 0;
}

int64_t ModelRole::optimizer_state_bytes() const {
  if (distributed_) return distributed_->state_bytes();
  return adam_ ? static_cast<int64_t>(sizeof(float) * (adam_->exp_avg().size() + adam_->exp_avg_sq().size())) : 0;
}

CheckpointContents ModelRole::contents() {
  CheckpointContents c;
  c.role = role_;
  c.params = &model_->params();
  c.optimizer_steps = optimizer_steps();
  if (distributed_) {
    c.exp_avg = &staging_m_;
    c.exp_avg_sq = &staging_v_;
  } else if (adam_) {
    c.exp_avg = &adam_->exp_avg();
    c.exp_avg_sq = &adam_->exp_avg_sq();
  }
  for (const auto& b : model_->state_buffers())  // the only non-parameter state of the model
    c.buffers.push_back({b.name, b.data, b.writer});
  return c;
}

CheckpointContents ModelRole::begin_save() {
  if (distributed_) distributed_->gather_moments(staging_m_, staging_v_);
  return contents();
}

void ModelRole::end_save() {
  staging_m_ = {};
  staging_v_ = {};
}

CheckpointContents ModelRole::begin_load() {
  if (distributed_) {
    staging_m_.assign(static_cast<size_t>(model_->params().numel()), 0.0f);
    staging_v_.assign(staging_m_.size(), 0.0f);
  }
  return contents();
}

void ModelRole::end_load(int64_t optimizer_steps) {
  model_->mark_values_changed();
  if (distributed_) {
    distributed_->scatter_moments(staging_m_, staging_v_);
    distributed_->set_steps_taken(optimizer_steps);
  } else if (adam_) {
    adam_->set_steps_taken(optimizer_steps);
  }
  end_save();
}

}  // namespace ff
