// The training loop: micro-batches with gradient accumulation, AdamW with warmup + decay and
// clipping, a log line and a JSONL metrics record per step, validation at intervals, and the
// trained model saved as safetensors at the end (out_dir/model.safetensors).
#pragma once
#include <string>

#include <memory>

#include "io/gpt_dataset.h"
#include "models/decoder_lm.h"
#include "train/config.h"
#include "train/data.h"
#include "train/flops.h"
#include "train/model_role.h"
#include "train/pipeline.h"
#include "train/preference_step.h"

namespace ff {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, aux_loss = 0, z_loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, mfu = 0, step_s = 0;
  double forward_s = 0, backward_s = 0, optimizer_s = 0;
  double max_expert_load = 0, mean_expert_load = 0;  // rows per expert, over MoE layers
  std::vector<double> layer_load_imbalance;          // per MoE layer (of this stage): max / mean rows per expert
  double dropped_fraction = 0;
  // Per MoE layer of the model, each expert's share of the layer's kept (token, expert) slots over
  // the whole global batch: the same under every layout (run_record.h).
  std::vector<std::vector<double>> expert_load;
  double peak_memory_bytes = 0;  // the largest resident-set high-water mark of the job's processes
  double communication_s = 0;  // this rank's time inside collectives during the step
  // Preference pairs (a pairwise objective): the fraction whose chosen response scored higher,
  // and the mean implicit reward of the chosen and the rejected (beta Delta, or the RM's score).
  double accuracy = 0, reward_chosen = 0, reward_rejected = 0;
};

// A validation pass: the mean loss (per target token, or per pair for a pairwise objective) and,
// for pairs, the fraction ranked right.
struct Validation {
  double loss = 0, accuracy = 0;
};

struct TrainResult {
  double first_loss = 0, final_loss = 0;
  double first_valid_loss = 0, final_valid_loss = 0;
  double final_valid_accuracy = 0;  // preference pairs ranked right (a pairwise objective)
  double unigram_entropy = 0;  // nats per token of the training split's token distribution
  std::vector<double> losses;  // per step
  bool stopped = false;        // by SIGTERM/SIGINT, after saving a checkpoint
  bool nothing_to_do = false;  // resumed at or past train.steps: nothing trained, evaluated or written
};

class Trainer {
 public:
  Trainer(RunConfig cfg, const ParallelGrid& grid);
  // quiet: no per-step log lines (tests). Writes out_dir/metrics.jsonl, run_config.json and
  // layout.json (train/run_record.h) and the final model.
  TrainResult run(bool quiet = false);
  // One optimizer step on this data-parallel replica's micro-batches (all pipeline stages and TP /
  // CP ranks of a replica get the same ones); used by run() and by the bench. Losses and tokens/s
  // are over the whole job (every replica), MFU per rank.
  // positions: per micro-batch (packed samples), or null / empty entries for 0 .. S-1; rewards:
  // per micro-batch the sequences' ground-truth rewards (RPO), or null.
  StepMetrics step(int64_t step_index, const std::vector<std::vector<int32_t>>& tokens,
                   const std::vector<std::vector<int32_t>>& targets,
                   const std::vector<std::vector<int32_t>>* positions = nullptr,
                   const std::vector<std::vector<float>>* rewards = nullptr);
  // Over the split's first eval_samples samples.
  Validation validate(const SampleSource& split, int64_t eval_samples);
  DecoderLM& model() { return student_.model(); }
  void set_mfu_basis(const MfuBasis& b) { basis_ = b; }
  const MfuBasis& mfu_basis() const { return basis_; }

 private:
  RunConfig cfg_;
  const ParallelGrid& grid_;
  ModelRole student_;                   // role "model": the model this run trains
  std::unique_ptr<ModelRole> teacher_;  // train.teacher: frozen, loaded at construction
  PipelineExecutor pipeline_;
  std::unique_ptr<PreferenceTraining> preference_;  // a pairwise objective (train.objective)
  MfuBasis basis_;  // what MFU is taken against; measured at the start of run() unless set
  void check_freeze_globs() const;
};

// Save / load the model weights (global names) with the run config, and the tokenizer when given,
// as metadata ("fivefold_config", "fivefold_tokenizer"). save_model writes this rank's
// parameters: the whole model only on one rank; see Trainer::run for several.
// progress: a progress line with an ETA on stderr while the file is written (the caller's choice:
// its lead rank, stderr a terminal).
void save_model(DecoderLM& model, RunConfig& cfg, const std::string& path, const TokenizerFile* tokenizer = nullptr,
                bool progress = false);
// The whole model of a checkpoint folder (written by any layout) as one model file.
// role: which of the checkpoint's models (io/checkpoint.h), "model" the trained one.
void save_model_from_checkpoint(const std::string& folder, RunConfig& cfg, const std::string& path,
                                const TokenizerFile* tokenizer = nullptr, const std::string& role = "model");
// The LoRA adapters of a model file alone (with its metadata), e.g. out_dir/adapters.safetensors.
void save_adapters(const std::string& model_path, const std::string& path);
// A run into an out_dir that holds another run's results (checkpoints, metrics, model files)
// moves them into out_dir/previous-N first, so that nothing is lost; a run resuming from
// out_dir's own checkpoints continues them instead. Call on one rank.
void move_earlier_run_aside(const TrainConfig& tc, bool quiet);
// Reads the config stored in a model file written by save_model.
RunConfig load_model_config(const std::string& path);
void load_model_weights(DecoderLM& model, const std::string& path);

}  // namespace ff
