// Tokenizers behind one interface: text -> token ids -> text, the vocabulary size and the special
// tokens (BOS, EOD = end of document, pad; -1 where a tokenizer has none).
//
//   byte           one token per byte (ids 0..255), EOD = 256, vocabulary 257; no file.
//   sentencepiece  a SentencePiece .model (Debian's libsentencepiece); BOS/EOD/pad are the model's
//                  bos/eos/pad ids. train_sentencepiece() makes one from a text corpus.
//   bpe            byte-level BPE from a Hugging Face tokenizer.json (GPT-2 / Llama-3 style):
//                  added tokens split out first, then the pre-tokenizer regex (hand-written, see
//                  bpe_tokenizer.cpp), bytes -> printable unicode (GPT-2 bytes_to_unicode), merges
//                  applied lowest rank first.
//
// decode(encode(t)) == t: for byte and bpe on any bytes, for sentencepiece on valid UTF-8 (the
// models this file trains use identity normalisation and byte fallback). encode() is const and
// safe to call from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/fields.h"

namespace ff {

enum class TokenizerType { byte, sentencepiece, bpe };
std::span<const EnumName<TokenizerType>> enum_names(TokenizerType);

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Throws ff::Error on an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // One line for logs: type, file, vocabulary size.
  virtual std::string describe() const = 0;
  int32_t bos() const { return bos_; }
  int32_t eod() const { return eod_; }
  int32_t pad() const { return pad_; }

 protected:
  int32_t bos_ = -1, eod_ = -1, pad_ = -1;
};

// A tokenizer's file held as bytes, so that a model file can carry the tokenizer it was made with
// (train writes it into model.safetensors; convert --from hf takes the folder's tokenizer).
struct TokenizerFile {
  TokenizerType type = TokenizerType::byte;
  std::string name;   // where it came from, for messages (e.g. "data/kjv-sp4096.model")
  std::string bytes;  // the file's contents; empty for the byte tokenizer
};
TokenizerFile read_tokenizer_file(TokenizerType type, const std::string& path);
std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerFile& f);
// As JSON text {"type", "name", "base64"} (safetensors metadata); source names it in errors.
std::string tokenizer_file_to_json(const TokenizerFile& f);
TokenizerFile tokenizer_file_from_json(const std::string& text, const std::string& source);

// `path` is ignored for the byte tokenizer. Errors name the file and what is wrong with it.
std::unique_ptr<Tokenizer> load_tokenizer(TokenizerType type, const std::string& path);

class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int64_t kVocabSize = 257;
  static constexpr int32_t kEod = 256;
  ByteTokenizer() { eod_ = kEod; }
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;  // EOD decodes to nothing
  int64_t vocab_size() const override { return kVocabSize; }
  std::string describe() const override { return "byte (vocabulary 257: bytes + EOD)"; }
};

// name: where the bytes came from, for messages.
std::unique_ptr<Tokenizer> make_sentencepiece(const std::string& name, const std::string& model_bytes);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const std::string& name, const std::string& tokenizer_json);

// `fivefold tokenizer train`: a SentencePiece model trained on text files, written to
// model_prefix.model (+ .vocab). Settings that make decode(encode(t)) == t: identity
// normalisation, no extra-whitespace removal, no dummy prefix, byte fallback. Ids: unk 0, bos 1,
// eos (EOD) 2, pad 3. The library's training log goes to model_prefix.log.
struct SentencePieceTrainConfig {
  std::string input;         // comma-separated text files; each line is one training sentence
  std::string model_prefix = "tokenizer";
  int64_t vocab_size = 4096;
  std::string model_type = "unigram";
  int64_t threads = 2;
  int64_t max_sentences = 2000000;  // sentences sampled from the input (0 = all)

  template <class V>
  void visit_fields(V& v) {
    v(input, "input", "comma-separated text files to train on (one sentence per line)");
    v(model_prefix, "model_prefix", "writes MODEL_PREFIX.model and MODEL_PREFIX.vocab");
    v(vocab_size, "vocab_size", "vocabulary size, special and byte-fallback tokens included");
    v(model_type, "model_type", "unigram | bpe");
    v(threads, "threads", "training threads");
    v(max_sentences, "max_sentences", "sentences sampled from the input for training (0 = all)");
  }
  std::vector<std::string> validate() const;
};
void train_sentencepiece(const SentencePieceTrainConfig& c);

}  // namespace ff
