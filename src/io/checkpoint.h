// Training checkpoints: a folder holding everything a run needs to continue exactly.
//
//   SAVE_DIR/latest                     the name of the newest complete checkpoint, updated last
//   SAVE_DIR/step_00000100/meta.json    format + version, step, consumed samples, optimizer steps,
//                                        the full run config, the parallel layout, and every file
//                                        with the rank that wrote it, its size and its checksum
//   .../model.r00000.safetensors        rank 0's slice of every parameter (fp32: these are the
//                                        master weights) and of the state buffers (expert bias)
//   .../optim.r00000.safetensors        Adam moments, "<name>.exp_avg" / "<name>.exp_avg_sq"
//   .../state.r00000.json               rank 0's RNG streams and data cursor
//   .../critic.model.r00000.safetensors  the same pair for each further trainable model of a
//   .../critic.optim.r00000.safetensors  recipe (DESIGN decision 14), under its role's name
//
// A recipe's models are saved under their roles: "model" (the trained model, whose files keep the
// plain names above) and any others ("critic", ...). meta.json lists them ("models": role,
// optimizer steps); a frozen model is not saved (its source is part of the run config).
//
// Tensors carry global (Hugging Face style) names. Each safetensors file's metadata
// "fivefold_placement" gives, per tensor, its global shape and the offset of the slice stored
// there, so a reader assembles any slice it needs from the chunks of all ranks: a checkpoint
// written under one parallel layout loads under another (specs/parallelism-and-moe.md §10).
// Replicas (Param::replica) are not written; the main replicas cover each tensor exactly once.
//
// Integrity: every file's checksum (core/hash.h word_hash) is verified before its tensors or
// state are read; a flipped bit is an error naming the file. Checkpoints written before
// checksums existed list none and are read without.
//
// Atomicity: files go to SAVE_DIR/step_N.tmp, each fsynced, then the folder is fsynced, renamed
// to step_N, SAVE_DIR fsynced, and `latest` replaced (tmp + fsync + rename). A process killed
// at any point leaves `latest` naming a complete checkpoint; stale .tmp folders are removed by
// the next save. Pruning keeps the newest keep_last checkpoints and never the one `latest` names.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/param.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "parallel/comm.h"

namespace ff {

// A named fp32 buffer that is training state but not a parameter (a router's expert bias).
// Held whole by every rank that uses it; exactly one of them writes it.
struct StateBuffer {
  std::string name;
  std::vector<float>* data = nullptr;
  bool write = true;  // this rank writes it (one rank per buffer; the others hold copies)
};

// The run's position and everything that is not a tensor.
struct TrainingState {
  int64_t step = 0;              // optimizer steps completed
  int64_t consumed_samples = 0;  // sequences consumed by all data-parallel ranks together
  int64_t optimizer_steps = 0;   // AdamW's bias-correction counter (of role "model")
  std::map<std::string, int64_t> role_optimizer_steps;  // every saved role's
  std::string data_cursor;       // this rank's data position, opaque JSON written by the data source
  std::map<std::string, std::array<uint64_t, 4>> rng;  // this rank's live RNG streams, by purpose
  std::string config_json;       // the full run config
  std::string layout_json;       // the parallel layout ({"world": n, "tp": .., ...})
};

// What a data source gives a checkpoint so a resumed run reads on from the same place: its
// position as a JSON text (the GPT dataset's sample cursor, train/data.h).
class DataCursor {
 public:
  virtual ~DataCursor() = default;
  virtual std::string save_cursor() const = 0;
  virtual void load_cursor(const std::string& json) = 0;
};

// Live training state a checkpoint reads from and writes into.
// Live training state of one model a checkpoint reads from and writes into.
struct CheckpointContents {
  ParamStore* params = nullptr;  // null: the model is held by other ranks of the job (nothing to write here)
  std::vector<float>* exp_avg = nullptr;  // null: weights only
  std::vector<float>* exp_avg_sq = nullptr;
  std::vector<StateBuffer> buffers;
  std::string role = "model";   // the model's name in the checkpoint: [a-z0-9_]+
  int64_t optimizer_steps = 0;  // its AdamW's bias-correction counter (written; read back by the state)
};

// Collective over `world`. Writes SAVE_DIR/step_N atomically with every model of `models` (distinct
// roles; the same list on every rank, though a rank may hold no part of a model: contents without
// params, as when PPO's actor and critic run on their own ranks; every model held by some rank),
// points `latest` at it, prunes to keep_last (0 = keep all).
// Returns the checkpoint folder. If step_N already exists complete, it is kept and only `latest`
// is updated.
// progress: a progress line with an ETA on stderr from rank 0 (the caller sets it when stderr is
// a terminal).
std::string save_checkpoint(const std::string& save_dir, const std::vector<CheckpointContents>& models,
                            const TrainingState& state, const Communicator& world, int64_t keep_last,
                            bool progress = false);
// One model (role "model").
inline std::string save_checkpoint(const std::string& save_dir, const CheckpointContents& contents,
                                   const TrainingState& state, const Communicator& world, int64_t keep_last) {
  return save_checkpoint(save_dir, std::vector<CheckpointContents>{contents}, state, world, keep_last);
}

// The checkpoint folder `path` names: a checkpoint folder itself (it holds meta.json), or a save
// folder with a `latest` pointer. Errors say what was found instead.
std::string resolve_checkpoint(const std::string& path);

// Reads meta.json and this rank's state file.
TrainingState read_checkpoint_state(const std::string& folder, int world_rank);

// Fills the contents' parameters, moments and buffers from the checkpoint's model of the same
// role, each local slice assembled from the stored chunks. Every problem (missing role or
// tensor, other global shape, wrong dtype, truncated file) is an error naming the tensor and file.
void load_checkpoint_tensors(const std::string& folder, const CheckpointContents& contents);

// Every tensor of one saved model at its global shape (conversion, inspection).
std::map<std::string, HostTensor> read_checkpoint_model(const std::string& folder, const std::string& role = "model");

// The roles of the models a checkpoint holds, in the order they were saved.
std::vector<std::string> checkpoint_roles(const std::string& folder);

// Complete checkpoint folders under save_dir, oldest first.
std::vector<std::string> list_checkpoints(const std::string& save_dir);

}  // namespace ff
