#include "train/run_checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/config_json.h"
#include "train/stop_signal.h"

namespace ff {

RunCheckpoint::RunCheckpoint(RunConfig& cfg, DecoderLM& model, AdamW& optimizer, const ParallelGrid& grid,
                             DistributedAdamW* distributed)
    : cfg_(cfg), model_(model), optimizer_(optimizer), distributed_(distributed), grid_(grid),
      world_(grid.all()) {}

bool RunCheckpoint::due(int64_t step) const {
  const int64_t every = cfg_.train.save_interval;
  return every > 0 && (step % every == 0 || step == cfg_.train.steps);
}

CheckpointContents RunCheckpoint::contents() {
  CheckpointContents c;
  c.params = &model_.params();
  if (distributed_) {  // the staging copies of the sharded moments
    c.exp_avg = &staging_m_;
    c.exp_avg_sq = &staging_v_;
  } else {
    c.exp_avg = &optimizer_.exp_avg();
    c.exp_avg_sq = &optimizer_.exp_avg_sq();
  }
  for (const auto& b : model_.state_buffers())  // the only non-parameter state of the model
    c.buffers.push_back({b.name, b.data, b.writer});
  return c;
}

std::string RunCheckpoint::save(int64_t step, const DataCursor& data) {
  TrainingState s;
  s.step = step;
  s.consumed_samples = step * cfg_.train.grad_accum * cfg_.train.micro_batch * grid_.dp_size();
  s.optimizer_steps = distributed_ ? distributed_->steps_taken() : optimizer_.steps_taken();
  s.data_cursor = data.save_cursor();
  s.config_json = run_config_to_json(cfg_);
  nlohmann::json layout = config_to_json(cfg_.parallel);
  layout["world_size"] = grid_.world_size();
  layout["dp"] = grid_.dp_size();
  layout["edp"] = grid_.edp_size();
  s.layout_json = layout.dump();
  if (distributed_) distributed_->gather_moments(staging_m_, staging_v_);
  const std::string dir = save_checkpoint(save_dir(), contents(), s, world_, cfg_.train.keep_checkpoints);
  staging_m_ = {};
  staging_v_ = {};
  return dir;
}

TrainingState RunCheckpoint::resume() {
  const std::string folder = resolve_checkpoint(cfg_.train.resume);
  TrainingState s = read_checkpoint_state(folder, grid_.world_rank());
  // Report model-config differences (shapes are checked tensor by tensor below).
  nlohmann::json stored = nlohmann::json::parse(s.config_json);
  nlohmann::json mine = config_to_json(cfg_.model);
  if (grid_.world_rank() == 0 && stored.contains("model"))
    for (auto it = mine.begin(); it != mine.end(); ++it)
      if (stored["model"].contains(it.key()) && stored["model"][it.key()] != *it)
        std::fprintf(stderr, "warning: resuming %s with model.%s = %s; the checkpoint was written with %s\n",
                     folder.c_str(), it.key().c_str(), it->dump().c_str(), stored["model"][it.key()].dump().c_str());
  if (distributed_) {
    staging_m_.assign(static_cast<size_t>(model_.params().numel()), 0.0f);
    staging_v_.assign(staging_m_.size(), 0.0f);
  }
  load_checkpoint_tensors(folder, contents());
  model_.mark_values_changed();
  if (distributed_) {
    distributed_->scatter_moments(staging_m_, staging_v_);
    distributed_->set_steps_taken(s.optimizer_steps);
    staging_m_ = {};
    staging_v_ = {};
  } else {
    optimizer_.set_steps_taken(s.optimizer_steps);
  }
  return s;
}

bool RunCheckpoint::stop_agreed() const {
  double flag = stop_requested() != 0 ? 1.0 : 0.0;
  world_.all_reduce_max(&flag, 1);
  return flag > 0;
}

RunConfig checkpoint_run_config(const std::string& path) {
  const std::string folder = resolve_checkpoint(path);
  TrainingState s = read_checkpoint_state(folder, 0);
  return run_config_from_json(s.config_json, folder + "/meta.json (config)");
}

void truncate_metrics(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in.good()) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t(0)) <= last_step) kept += line + "\n";
    } catch (const std::exception&) {
      break;  // a torn last line of a killed run
    }
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

}  // namespace ff
