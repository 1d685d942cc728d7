// SPIN, self-play fine-tuning (specs/methods.md §6.6): for each of train.spin_iterations
// iterations, the current model (first: train.init_from, an SFT model) is frozen as the
// reference and generates a response to every prompt of the SFT data (train.data_path, JSONL
// prompt/response, rendered by train.chat_template); each generated response is paired, as the
// rejected one, with the prompt's SFT response as the chosen one; the policy trains on those pairs
// with the DPO loss (train.steps steps, train.dpo_beta) against the reference; the trained model
// becomes the next iteration's reference and starting point.
//
// Files, out_dir/iter-K for iteration K: pairs.jsonl (what it trained on), metrics.jsonl,
// checkpoints/ and model.safetensors (the iteration's result), and out_dir/spin.jsonl, one record
// per finished iteration. Stopped and started again with the same command, a run skips the
// iterations that have their model, resumes an iteration from its checkpoints, and reuses its
// pairs; out_dir/model.safetensors is the last iteration's model.
#pragma once

#include "parallel/grid.h"
#include "train/config.h"

namespace ff {

// Collective over the grid. cfg: the resolved run (data_format sft, init_from the SFT model).
void run_spin(const RunConfig& cfg, const ParallelGrid& grid, bool quiet = false);

}  // namespace ff
