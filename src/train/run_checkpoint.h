// What of a training run goes into a checkpoint and back (the format is io/checkpoint.h): the
// parameters (fp32 master weights), AdamW's moments and step counter, the routers' expert-bias
// buffers, the step and consumed samples, the data cursor, the run config and parallel layout.
// Checkpoints of out_dir go to out_dir/checkpoints.
#pragma once
#include <string>

#include "io/checkpoint.h"
#include "models/decoder_lm.h"
#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "train/config.h"

namespace ff {

class RunCheckpoint {
 public:
  // Collective over the world (it keeps a world communicator for saves).
  // distributed: the distributed optimizer when the run uses it (its sharded moments are gathered
  // for a save and scattered after a load), else null.
  RunCheckpoint(RunConfig& cfg, DecoderLM& model, AdamW& optimizer, const ParallelGrid& grid,
                DistributedAdamW* distributed = nullptr);

  std::string save_dir() const { return cfg_.train.out_dir + "/checkpoints"; }
  // A checkpoint is due after step `step` (1-based) every save_interval steps and at the end.
  bool due(int64_t step) const;
  // Loads cfg.train.resume into the model, optimizer and buffers; returns the state (step, data
  // cursor) for the caller to continue from. Differences between the checkpoint's model config
  // and this run's are reported; differing shapes are errors.
  TrainingState resume();
  std::string save(int64_t step, const DataCursor& data);
  // True on every rank if any rank received SIGTERM/SIGINT.
  bool stop_agreed() const;

 private:
  CheckpointContents contents();
  RunConfig& cfg_;
  DecoderLM& model_;
  AdamW& optimizer_;
  DistributedAdamW* distributed_;
  std::vector<float> staging_m_, staging_v_;  // whole moments while a save or load runs (distributed)
  const ParallelGrid& grid_;
  const Communicator& world_;  // every rank of the job (the grid's)
};

// The run config stored in a checkpoint (folder or save folder with `latest`): `train --resume`
// starts from it, then applies flags.
RunConfig checkpoint_run_config(const std::string& path);

// Keeps the records of steps <= last_step in a metrics.jsonl (a resumed run rewrites the rest).
void truncate_metrics(const std::string& path, int64_t last_step);

}  // namespace ff
