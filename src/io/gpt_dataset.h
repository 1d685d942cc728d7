// GPT pre-training samples from indexed datasets, as Megatron's GPTDataset builds them.
//
// A split is a contiguous range of documents (split_documents). For E epochs (the fewest that give
// the samples asked for), three arrays are built:
//   document index  the split's documents, reshuffled each epoch (Rng(seed, "gpt-documents", e)),
//                   expanded to their sequence ids; read in order it is one token stream of E * T
//                   tokens (T = tokens in the split);
//   sample index    per sample i, the (document-index position, token offset) where it starts:
//                   sample i is stream tokens [i * L, i * L + L + 1), L = seq_len, crossing document
//                   (and epoch) boundaries; N = (E * T - 1) / L samples in all;
//   shuffle index   a permutation of the samples, shuffled within each epoch (Rng(seed,
//                   "gpt-samples", e)), where a sample belongs to the epoch its first token is in.
// Read in shuffled order, the samples of one epoch cover every token of the split exactly once as
// an input (the last one may run into the next epoch). The arrays are cached beside the data in
// DIR/cache/STEM-SPLIT-HASH-{document,sample,shuffle}_index.npy (numpy int64) with a
// -description.json naming every parameter; HASH is FNV-1a over that description, which includes
// the sizes and modification times of PREFIX.idx/.bin, so a rebuilt dataset never reuses a stale cache.
//
// BlendedDataset interleaves several datasets with weights w_d (normalised) as Megatron does:
// sample i comes from the dataset with the largest deficit w_d * (i + 1) - taken_d (first on
// ties), so after n samples each dataset has supplied w_d * n of them to within one sample.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/indexed_dataset.h"

namespace ff {

struct DocRange {
  int64_t begin = 0, end = 0;
};

// Splits num_documents by ratios "a,b,c" (train, valid, test; any non-negative numbers, at least
// one positive; missing trailing entries are 0) into contiguous ranges, Megatron's
// get_split_indices: boundaries at round(cumulative fraction * num_documents).
// `what` names the source in error messages (e.g. "train.split").
std::array<DocRange, 3> split_documents(const std::string& split, int64_t num_documents, const std::string& what);

struct GptDatasetOptions {
  int64_t seq_len = 0;
  uint64_t seed = 0;
  int64_t num_samples = 0;   // at least this many samples (more epochs are built as needed)
  DocRange documents;        // the split
  std::string split_name = "train";
  int64_t vocab_size = 0;    // every token read is checked against it
  bool use_cache = true;     // read / write the index cache beside the data
};

class GptDataset {
 public:
  GptDataset(std::shared_ptr<const IndexedDataset> data, const GptDatasetOptions& o);
  int64_t size() const { return static_cast<int64_t>(shuffle_.size()); }
  int64_t epochs() const { return epochs_; }
  int64_t tokens_per_epoch() const { return tokens_per_epoch_; }
  // Shuffled samples [epoch_begin(e), epoch_begin(e + 1)) are those of epoch e.
  int64_t epoch_begin(int64_t e) const { return epoch_starts_[static_cast<size_t>(e)]; }
  // out[seq_len + 1]: shuffled sample i (0 <= i < size()).
  void get(int64_t i, int32_t* out) const;
  // The unshuffled sample i, i.e. stream tokens [i * L, i * L + L + 1).
  void get_unshuffled(int64_t i, int32_t* out) const;
  bool loaded_from_cache() const { return from_cache_; }
  const std::string& cache_prefix() const { return cache_prefix_; }
  const IndexedDataset& data() const { return *data_; }

 private:
  void build();
  bool load_cache(const std::string& description);
  void save_cache(const std::string& description) const;

  std::shared_ptr<const IndexedDataset> data_;
  GptDatasetOptions o_;
  int64_t epochs_ = 0, tokens_per_epoch_ = 0;
  std::vector<int64_t> doc_index_;     // sequence ids
  std::vector<int64_t> sample_index_;  // [N, 2]: position in doc_index_, offset in that sequence
  std::vector<int64_t> shuffle_;       // [N]
  std::vector<int64_t> epoch_starts_;  // [E + 1]
  bool from_cache_ = false;
  std::string cache_prefix_;
};

class BlendedDataset {
 public:
  // Each part must hold at least samples_needed(weights, size)[d] samples.
  BlendedDataset(std::vector<std::unique_ptr<GptDataset>> parts, std::vector<double> weights, int64_t size);
  // Samples each part must supply for a blend of `size` samples.
  static std::vector<int64_t> samples_needed(const std::vector<double>& weights, int64_t size);
  int64_t size() const { return static_cast<int64_t>(dataset_index_.size()); }
  void get(int64_t i, int32_t* out) const;
  int dataset_of(int64_t i) const { return dataset_index_[static_cast<size_t>(i)]; }
  const std::vector<std::unique_ptr<GptDataset>>& parts() const { return parts_; }
  const std::vector<double>& weights() const { return weights_; }

 private:
  std::vector<std::unique_ptr<GptDataset>> parts_;
  std::vector<double> weights_;  // normalised
  std::vector<int32_t> dataset_index_;
  std::vector<int64_t> sample_index_;
};

// numpy .npy (format 1.0) of little-endian int64, shape (n,) or (n, cols); read returns false on
// anything else (a stale or foreign cache file is rebuilt, not trusted).
void write_npy_i64(const std::string& path, const std::vector<int64_t>& v, int64_t cols);
bool read_npy_i64(const std::string& path, std::vector<int64_t>& v, int64_t cols);

}  // namespace ff
