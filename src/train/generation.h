// Text generation on the inference path (DecoderLM::Decoder): batched prompts decoded together
// with a KV cache, under any layout of TP, EP and PP (every rank of the job takes part; the last
// pipeline stage samples and broadcasts each step's tokens to the others).
//
// The sequences advance in lockstep: one prefill of the shortest prompt's length, then one
// position per step, where a sequence still inside its prompt is fed its next prompt token and
// the others their sampled one. When the cache is full (model.seq_len positions), the context
// restarts from the last half of each sequence, prefilled at positions 0 ..; kv_cache = false
// recomputes the whole context at every step instead (the reference the cache is tested against:
// both see exactly the same contexts).
// Sampling per sequence, from its own stream Rng(seed, "generate", index): greedy at temperature
// 0; else softmax(logits / temperature) restricted to the top_k tokens and then to the smallest
// set whose probability reaches top_p. A sequence ends at the tokenizer's EOD (EOS) token, at a
// stop string (the text is cut before it), or after max_new_tokens.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "parallel/grid.h"

namespace ff {

struct SamplingOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 40;        // 0 = the whole vocabulary
  double top_p = 1.0;        // nucleus; 1 = off
  uint64_t seed = 1;
  uint64_t first_stream = 0;      // sequence b samples from stream first_stream + b: a batch decoded in parts draws as whole
  std::vector<std::string> stop;  // stop strings
  bool kv_cache = true;           // false: recompute the context every step
};

struct Generated {
  std::vector<int32_t> tokens;  // the new tokens (up to the end)
  std::string text;             // their text, cut before a stop string
  std::string finish;           // "eos", "stop" or "length"
};

struct GenerationStats {
  int64_t new_tokens = 0;  // over the batch
  double seconds = 0;
  int64_t steps = 0;       // model calls (prefills and decode steps)
};

// Collective over the grid. prompts: token ids of each sequence (at least one each); every rank
// passes the same. Returns the same on every rank. progress: a progress line with an ETA on
// stderr from world rank 0 (the caller sets it when stderr is a terminal).
std::vector<Generated> generate(DecoderLM& model, const ParallelGrid& grid, const Tokenizer& tokenizer,
                                const std::vector<std::vector<int32_t>>& prompts, const SamplingOptions& o,
                                GenerationStats* stats = nullptr, bool progress = false);

// One token from logits[V] (the first vocab entries only; the model may have padding rows).
int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& o, Rng& rng);

}  // namespace ff
