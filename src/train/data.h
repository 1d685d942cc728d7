// The trainer's data: the tokenizer and the train / valid sample streams named by train.data_path.
//
// train.data_path is one source or a blend "W1 PATH1 W2 PATH2 ...". A source is an indexed dataset
// PREFIX (PREFIX.idx + PREFIX.bin exist) or a text / JSONL file, which is prepared on first use:
//   - with train.tokenizer_type sentencepiece and no file at train.tokenizer_path, a tokenizer of
//     model.vocab_size entries is trained on the run's text sources;
//   - the file is preprocessed into PREFIX = its folder / STEM-TAG-EXT-HASH, TAG the tokenizer's
//     file stem ("byte" for the byte tokenizer; a repeated corpus name left out), HASH naming the
//     source's path, the tokenizer (type, path) and train.json_key: data/kjv.txt +
//     data/kjv-sp4096.model -> data/kjv-sp4096-txt-1f0c2a9b.{bin,idx}. PREFIX.source.json holds
//     what the files were made from (source and tokenizer: path, bytes, modification time; the
//     tokenizer's content hash; the JSON key).
// Later runs reuse the prepared files only when that record matches the source and tokenizer as
// they are now, and prepare them again otherwise; a lock (PREFIX.lock) keeps two processes from
// preparing one dataset at once. Rank 0 prepares while the other ranks wait. Each source is split by documents with train.split; the
// train stream blends the train splits by weight, the valid stream the valid splits.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/gpt_dataset.h"
#include "io/tokenizer.h"
#include "parallel/comm.h"
#include "train/config.h"

namespace ff {

// What the trainer reads, B samples at a time: tokens and targets [B*S] (a target of -1 has no
// loss: padding, or a prompt under SFT), and the rows' positions when several examples are packed
// into one sample (empty: 0 .. S-1 in each). Sample indices are taken modulo size().
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual void fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
                    int64_t first, int64_t B, int64_t S) const = 0;
  virtual int64_t size() const = 0;
  // Labels of each of the B sequences from `first`, [B, K] for K labels per sequence: the
  // ground-truth reward of preference pairs (RPO; K = 1), a SteerLM attribute model's attribute
  // values (-100 where a record has none); empty: none.
  virtual std::vector<float> sequence_labels(int64_t /*first*/, int64_t /*B*/) const { return {}; }
};

struct TrainingData {
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<SampleSource> train, valid;
  double unigram_entropy = 0;  // nats per token of the train splits' token distribution (blend-weighted)
  std::string summary;         // one line for the log
};

// Collective over `world` (every rank of the job reads the data).
TrainingData open_training_data(const RunConfig& c, int64_t train_samples, int64_t valid_samples,
                                const Communicator& world, bool quiet);

// Evaluation data: one source (prepared like a training source), the documents of one part of
// train.split ("train", "valid", "test") or "all" of them, read as the consecutive windows of
// seq_len + 1 tokens of one epoch's stream (get_unshuffled(i), i < samples; the tokens past the
// last whole window are not evaluated).
struct EvalData {
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<GptDataset> windows;
  int64_t samples = 0;
  std::string summary;
};
EvalData open_eval_data(const RunConfig& c, const std::string& part, const Communicator& world, bool quiet);

// Pre-training samples of a blend: each sample's first S tokens are its tokens, its last S the targets.
class GptSamples : public SampleSource {
 public:
  explicit GptSamples(std::unique_ptr<BlendedDataset> ds) : ds_(std::move(ds)) {}
  void fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
            int64_t first, int64_t B, int64_t S) const override;
  int64_t size() const override { return ds_->size(); }
  const BlendedDataset& blend() const { return *ds_; }

 private:
  std::unique_ptr<BlendedDataset> ds_;
};

// tokens/targets [B*S]: samples first .. first + B - 1 of `src` (sources that do not pack).
inline void fill_batch(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, const SampleSource& src,
                       int64_t first, int64_t B, int64_t S) {
  std::vector<int32_t> positions;
  src.fill(tokens, targets, positions, first, B, S);
}

// The resumable position in the train stream: the next sample of the blend, the same on every
// rank (data-parallel rank r of R reads samples next + (m * R + r) * B .. of micro-batch m).
// Stored in checkpoints as {"kind": "gpt-samples", "next_sample": N, "data": "<train.data_path>"}.
struct SampleCursor : DataCursor {
  int64_t next_sample = 0;
  std::string data;  // train.data_path, to refuse a cursor from another data set
  std::string save_cursor() const override;
  void load_cursor(const std::string& json) override;
};

}  // namespace ff
