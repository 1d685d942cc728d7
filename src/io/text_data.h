// Text corpora as token streams. ByteTokenizer: one token per byte (vocab 256), exact round trip
// for any input. TextData: a file tokenised whole, its tail held out for validation, and batches
// of windows of S + 1 tokens drawn from a seeded stream (inputs = first S, targets = last S).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"

namespace ff {

struct ByteTokenizer {
  static constexpr int64_t kVocabSize = 256;
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const int32_t* ids, int64_t n) const;
};

struct TextData {
  std::vector<int32_t> train, valid;
  // Reads `path` whole; the last valid_fraction of it becomes the validation split. Errors name
  // the file: missing, unreadable, or too short for one sample of seq_len + 1 tokens per split.
  static TextData load(const std::string& path, double valid_fraction, int64_t seq_len);
};

// tokens/targets [B*S]: B windows starting at positions drawn uniformly from `rng`.
void sample_batch(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, const std::vector<int32_t>& source,
                  int64_t B, int64_t S, Rng& rng);

}  // namespace ff
