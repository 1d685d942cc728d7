// `fivefold prune` (Minitron-SSM; specs/methods.md §3.5-3.6): a model's importance scores from
// forward passes over calibration data, then a smaller model sliced from it to the target sizes:
// embedding channels (d_model), FFN neurons, attention query heads (within query groups), Mamba2
// heads (group-aware by default, within each group) and head channels, and whole layers (the
// lowest 1 - cos(h_in, h_out) first). The pruned model is written as a model file with its config
// and tokenizer; the scores as JSON a user can read.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/importance.h"
#include "models/config.h"
#include "models/prune_keep.h"

namespace ff {


// What the pruned model keeps of each dimension (every list ascending; Mamba heads by group).
struct PrunePlan {
  ModelConfig from, to;
  std::vector<int64_t> embedding;          // kept d_model channels
  std::vector<int64_t> layers;             // kept pattern layers of `from`
  std::vector<LayerKeep> keep;              // per kept layer
};

// Every problem with the targets for this model, each naming its flag (empty: fine).
std::vector<std::string> prune_target_problems(const ModelConfig& c, const PruneTargets& t);
// The keep sets from finished statistics (DecoderLM::declare_importance's entries).
PrunePlan plan_pruning(const ModelConfig& c, const ImportanceStats& stats, const PruneTargets& t);
// The pruned model's tensor `name` from the unpruned model's (a load_model_source transform).
bool pruned_tensor(const PrunePlan& plan, const TensorSource& source, const std::string& name, HostTensor& out);

}  // namespace ff
