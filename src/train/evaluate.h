// `fivefold eval`: a model's loss on a corpus, under any parallel layout. The data's windows
// (train/data.h EvalData) are dealt out to the data-parallel replicas, micro-batch by micro-batch;
// a last micro-batch short of windows is padded with rows whose targets are all masked, so every
// window counts exactly once whatever the layout and micro-batch size.
//   loss           mean negative log-likelihood per target token (nats)
//   perplexity     exp(loss)
//   bits per byte  total NLL / ln 2 / bytes of the decoded target text (window by window)
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "io/tokenizer.h"
#include "parallel/grid.h"

namespace ff {

struct EvalOptions {
  std::string model;                      // model file, checkpoint or Hugging Face folder
  std::string data;                       // text / JSONL file or indexed-dataset prefix
  std::string json_key = "text";
  std::string split = "98,2,0";           // train,valid,test ratios over the documents (as train.split)
  std::string part = "all";               // all | train | valid | test
  int64_t micro_batch = 8;
  int64_t seq_len = 0;                    // 0: the model's
  int64_t max_windows = 0;                // 0: all
  std::optional<TokenizerFile> tokenizer;  // none: the model's own
  bool progress = false;                  // a progress line with an ETA on stderr (lead rank; the CLI sets it on a terminal)
};

struct EvalResult {
  double loss = 0, perplexity = 0, bits_per_byte = 0;
  int64_t tokens = 0, bytes = 0, windows = 0;
};

// Collective over the grid's ranks (every rank gets the result).
EvalResult run_eval(const EvalOptions& o, const ParallelGrid& grid, bool quiet = false);

}  // namespace ff
