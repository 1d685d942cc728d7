// What of a training run goes into a checkpoint and back (the format is io/checkpoint.h): for each
// trainable model of the recipe, under its role, the parameters (fp32 master weights), AdamW's
// moments and step counter and the routers' expert-bias buffers; the step and consumed samples,
// the data cursor, the run config and parallel layout. Frozen models are not saved: the run config
// names their source. Checkpoints of out_dir go to out_dir/checkpoints.
#pragma once
#include <string>

#include "io/checkpoint.h"
#include "models/decoder_lm.h"
#include "train/config.h"
#include "train/model_role.h"

namespace ff {

// One trainable model of a recipe under its role; model null where other ranks of the job hold it
// (PPO's actor and critic on their own rank groups).
struct SavedModel {
  std::string role;
  ModelRole* model = nullptr;
};

class RunCheckpoint {
 public:
  // Collective over `world`, every rank of the job (kept for saves). models: the recipe's
  // trainable models, the trained one (role "model") first; the same roles on every rank, each
  // held by some. grid: this rank's grid.
  RunCheckpoint(RunConfig& cfg, std::vector<SavedModel> models, const ParallelGrid& grid, const Communicator& world);
  // Every model on every rank, the job's world the grid's.
  RunCheckpoint(RunConfig& cfg, const std::vector<ModelRole*>& models, const ParallelGrid& grid);

  std::string save_dir() const { return cfg_.train.out_dir + "/checkpoints"; }
  // A checkpoint is due after step `step` (1-based) every save_interval steps and at the end.
  bool due(int64_t step) const;
  // Loads cfg.train.resume into each model, its optimizer and buffers; returns the state (step,
  // data cursor) for the caller to continue from. Differences between the checkpoint's model
  // config and this run's are reported; differing shapes and missing roles are errors.
  TrainingState resume();
  std::string save(int64_t step, const DataCursor& data);
  // Saves show a progress line with an ETA on rank 0's stderr (set it when stderr is a terminal).
  void show_progress(bool on) { progress_ = on; }
  // True on every rank if any rank received SIGTERM/SIGINT.
  bool stop_agreed() const;

 private:
  RunConfig& cfg_;
  std::vector<SavedModel> models_;
  const ParallelGrid& grid_;
  const Communicator& world_;  // every rank of the job
  bool progress_ = false;
};

// The run config stored in a checkpoint (folder or save folder with `latest`): `train --resume`
// starts from it, then applies flags.
RunConfig checkpoint_run_config(const std::string& path);

// Keeps the records of steps <= last_step in a metrics.jsonl (a resumed run rewrites the rest).
void truncate_metrics(const std::string& path, int64_t last_step);

}  // namespace ff
