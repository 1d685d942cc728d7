// `fivefold search` (Minitron's architecture search; specs/methods.md §3.8): candidate sizes of a
// model within a parameter budget, each pruned from the same importance scores, distilled briefly
// from the original, and ranked by validation loss beside its measured decode speed.
//
// Candidates: every combination of the width dimensions the model has (d_model, FFN, Mamba2
// heads, Mamba2 head channels) at the fractions 1, 7/8, 3/4, 5/8 and 1/2, rounded down to their
// divisors (8 channels; Mamba heads a multiple of the groups; head channels a multiple of 4), and,
// with `depth`, the full width with fewer layers (down to half). Those with at most
// `target_params` parameters and at least (1 - tolerance) of it are kept, the `candidates` largest
// distilled, the best depth-only one among them when any qualifies (width against depth).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/prune_keep.h"
#include "parallel/grid.h"
#include "recipes/prune/prune.h"
#include "train/config.h"

namespace ff {

struct SearchOptions {
  int64_t target_params = 0;   // the budget: total parameters of a candidate, at most
  double tolerance = 0.1;      // candidates have at least (1 - tolerance) target_params
  int64_t candidates = 6;      // distilled, at most
  bool depth = true;           // also fewer layers at full width
  int64_t calib_samples = 64;  // calibration windows (of the data in train.data_path)
  int64_t decode_batch = 4, decode_tokens = 64;  // the decode-speed measurement: sequences, new tokens each
};

struct SearchCandidate {
  PruneTargets targets;
  ModelConfig config;      // the pruned model's
  int64_t params = 0;
  bool depth_only = false;
  std::string describe() const;  // "d_model 192, ffn 768, mamba 8 x 48, 10 layers"
};

// Every candidate within the budget, largest first (then in enumeration order), and the chosen
// ones for distillation: the first o.candidates, the best depth-only candidate taking the last
// place if none is among them. Pure: the plans come from `stats`.
std::vector<SearchCandidate> search_candidates(const ModelConfig& c, const ImportanceStats& stats,
                                               const SearchOptions& o);
std::vector<SearchCandidate> choose_candidates(const std::vector<SearchCandidate>& all, const SearchOptions& o);

// The whole search, collective over the grid: `base` is the run config of the distillation runs
// (train.init_from: the model to compress, also the teacher; train.steps each; train.out_dir the
// search's folder). Writes OUT/candidates/<k>/ (init.safetensors, the distilled run), OUT/search.json
// and OUT/search.md (the table), and prints the table.
void run_search(const RunConfig& base, const SearchOptions& o, const ParallelGrid& grid);

}  // namespace ff
