// The `fivefold prune` run: calibration forwards under the job's layout (data parallelism
// spreads the calibration windows; TP, CP and EP each see their share; each pipeline stage takes
// the statistics of its own layers), the plan, the scores as JSON, and the pruned model file
// written by rank 0 from the source's tensors.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/gpt_dataset.h"
#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "parallel/grid.h"
#include "recipes/prune/prune.h"
#include "train/model_source.h"

namespace ff {

struct PruneRunOptions {
  std::string model;          // model file, checkpoint or Hugging Face folder
  std::string data;           // calibration text / JSONL file or indexed-dataset prefix
  std::string out;            // the pruned model file
  std::string scores;         // where to write the importance scores (JSON); empty: beside out
  int64_t calib_samples = 64;  // windows of model.seq_len tokens (the part's first ones)
  std::string part = "train";  // which documents of `split` calibrate: all, train, valid or test
  std::string split = "969,30,1";
  int64_t micro_batch = 4;
  PruneTargets targets;
  std::optional<TokenizerFile> tokenizer;  // none: the model's own
  bool progress = false;  // calibration progress with an ETA on rank 0's stderr (the CLI: a terminal)
};

// Collective over the grid's ranks. Returns the plan (every rank). --target_num_experts must be a
// multiple of parallel.ep and --target_moe_ffn_hidden of the expert-TP size: the pruned model runs
// on the job's layout.
PrunePlan run_prune(const PruneRunOptions& o, const ParallelGrid& grid, bool quiet = false);

// A model and its calibration statistics, ready to be planned and sliced any number of times.
struct CalibratedModel {
  ModelSource source;
  RunConfig config;          // the source's, on the job's layout, reading the calibration data
  TokenizerFile tokenizer;   // the model's (or the one given)
  ImportanceStats stats;
  int64_t samples = 0;       // calibration windows used
};
// Loads o.model on the grid and runs the calibration forwards over o.data (o.targets unused).
// Collective.
CalibratedModel calibrate_model(const PruneRunOptions& o, const ParallelGrid& grid, bool quiet = false);
// The pruned model file: built whole in this process from the source's tensors, with its config
// and tokenizer (call on one rank).
void write_pruned_model(const CalibratedModel& m, const PrunePlan& plan, const std::string& path);

// Calibration batches through the model's pipeline stages: the forward only, chunk after chunk in
// virtual-stage order (the activations passed on over the PP group as in training), then the
// statistics of the layers held here added. Collective over the grid (each rank's groups).
class CalibrationPass {
 public:
  CalibrationPass(DecoderLM& model, const ParallelGrid& grid);
  // One batch: tokens [B*S] (this data-parallel replica's), then stats.end_batch().
  void add(const int32_t* tokens, int64_t B, int64_t S, ImportanceStats& stats);

 private:
  DecoderLM& model_;
  const Communicator& pp_;
  std::unique_ptr<DecoderLM::MicroBatch> mb_;
  std::vector<std::vector<float>> inputs_;  // per chunk: the previous virtual stage's output
};

// The calibration statistics of `model` over windows [0, samples) of the data, dealt out to the
// data-parallel replicas as `fivefold eval` deals them. Collective.
// progress: a progress line on world rank 0's stderr.
ImportanceStats calibrate(DecoderLM& model, const ParallelGrid& grid, const GptDataset& windows, int64_t samples,
                          int64_t micro_batch, bool progress = false);

}  // namespace ff
