#include "io/text_data.h"

#include <fstream>
#include <sstream>

#include "core/check.h"

namespace ff {

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const int32_t* ids, int64_t n) const {
  std::string s;
  s.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    FF_CHECK(ids[i] >= 0 && ids[i] < kVocabSize, "token %d at %lld is not a byte token", ids[i], (long long)i);
    s.push_back(static_cast<char>(ids[i]));
  }
  return s;
}

TextData TextData::load(const std::string& path, double valid_fraction, int64_t seq_len) {
  std::ifstream f(path, std::ios::binary);
  FF_CHECK(f.good(), "train.data_path '%s': cannot open the file; give an existing text file "
                     "(the default corpus is made by scripts/prepare_corpus.sh)", path.c_str());
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  auto ids = ByteTokenizer{}.encode(text);
  const auto n = static_cast<int64_t>(ids.size());
  const auto n_valid = static_cast<int64_t>(static_cast<double>(n) * valid_fraction);
  FF_CHECK(n - n_valid > seq_len && n_valid > seq_len,
           "train.data_path '%s': %lld bytes is too short for seq_len %lld with valid_fraction %g; "
           "each split needs more than seq_len + 1 tokens", path.c_str(), (long long)n, (long long)seq_len, valid_fraction);
  TextData d;
  d.train.assign(ids.begin(), ids.end() - n_valid);
  d.valid.assign(ids.end() - n_valid, ids.end());
  return d;
}

void sample_batch(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, const std::vector<int32_t>& source,
                  int64_t B, int64_t S, Rng& rng) {
  const auto n = static_cast<int64_t>(source.size());
  FF_CHECK(n > S, "data split of %lld tokens is shorter than seq_len + 1 = %lld", (long long)n, (long long)S + 1);
  tokens.resize(static_cast<size_t>(B * S));
  targets.resize(static_cast<size_t>(B * S));
  for (int64_t b = 0; b < B; ++b) {
    const auto start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - S)));
    for (int64_t s = 0; s < S; ++s) {
      tokens[static_cast<size_t>(b * S + s)] = source[static_cast<size_t>(start + s)];
      targets[static_cast<size_t>(b * S + s)] = source[static_cast<size_t>(start + s + 1)];
    }
  }
}

}  // namespace ff
