#include "train/run_checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/config_json.h"
#include "train/stop_signal.h"

namespace ff {

RunCheckpoint::RunCheckpoint(RunConfig& cfg, std::vector<SavedModel> models, const ParallelGrid& grid,
                             const Communicator& world)
    : cfg_(cfg), models_(std::move(models)), grid_(grid), world_(world) {
  FF_CHECK(!models_.empty() && models_.front().role == "model", "RunCheckpoint: the trained model (role 'model') "
           "comes first");
  for (const SavedModel& m : models_)
    FF_CHECK(!m.model || (m.model->trainable() && m.model->role() == m.role), "RunCheckpoint: model '%s' is frozen "
             "or named otherwise; frozen models are not saved", m.role.c_str());
}

namespace {
std::vector<SavedModel> held_here(const std::vector<ModelRole*>& models) {
  std::vector<SavedModel> out;
  for (ModelRole* m : models) out.push_back({m->role(), m});
  return out;
}
}  // namespace

RunCheckpoint::RunCheckpoint(RunConfig& cfg, const std::vector<ModelRole*>& models, const ParallelGrid& grid)
    : RunCheckpoint(cfg, held_here(models), grid, grid.all()) {}

bool RunCheckpoint::due(int64_t step) const {
  const int64_t every = cfg_.train.save_interval;
  return every > 0 && (step % every == 0 || step == cfg_.train.steps);
}

std::string RunCheckpoint::save(int64_t step, const DataCursor& data) {
  TrainingState s;
  s.step = step;
  s.consumed_samples = step * cfg_.train.grad_accum * cfg_.train.micro_batch * grid_.dp_size();
  s.optimizer_steps = models_.front().model ? models_.front().model->optimizer_steps() : 0;
  s.data_cursor = data.save_cursor();
  s.config_json = run_config_to_json(cfg_);
  nlohmann::json layout = config_to_json(cfg_.parallel);
  layout["world_size"] = world_.size();
  layout["dp"] = grid_.dp_size();
  layout["edp"] = grid_.edp_size();
  s.layout_json = layout.dump();
  std::vector<CheckpointContents> contents;
  for (const SavedModel& m : models_) {
    CheckpointContents c;
    if (m.model) c = m.model->begin_save();
    c.role = m.role;
    contents.push_back(c);
  }
  const std::string dir = save_checkpoint(save_dir(), contents, s, world_, cfg_.train.keep_checkpoints, progress_);
  for (const SavedModel& m : models_)
    if (m.model) m.model->end_save();
  return dir;
}

TrainingState RunCheckpoint::resume() {
  const std::string folder = resolve_checkpoint(cfg_.train.resume);
  TrainingState s = read_checkpoint_state(folder, world_.rank());
  // Report model-config differences (shapes are checked tensor by tensor below).
  nlohmann::json stored = nlohmann::json::parse(s.config_json);
  nlohmann::json mine = config_to_json(cfg_.model);
  if (world_.rank() == 0 && stored.contains("model"))
    for (auto it = mine.begin(); it != mine.end(); ++it)
      if (stored["model"].contains(it.key()) && stored["model"][it.key()] != *it)
        std::fprintf(stderr, "warning: resuming %s with model.%s = %s; the checkpoint was written with %s\n",
                     folder.c_str(), it.key().c_str(), it->dump().c_str(), stored["model"][it.key()].dump().c_str());
  for (const SavedModel& m : models_) {
    if (!m.model) continue;
    load_checkpoint_tensors(folder, m.model->begin_load());
    const auto steps = s.role_optimizer_steps.find(m.role);
    m.model->end_load(steps != s.role_optimizer_steps.end() ? steps->second : s.optimizer_steps);
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
  write_file_atomically(path, kept);  // checked, and never a half-truncated file
}

}  // namespace ff
