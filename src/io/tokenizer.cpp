#include "io/tokenizer.h"

#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/base64.h"
#include "core/check.h"

namespace ff {

namespace {
constexpr EnumName<TokenizerType> kTokenizerTypes[] = {
    {TokenizerType::byte, "byte"}, {TokenizerType::sentencepiece, "sentencepiece"}, {TokenizerType::bpe, "bpe"}};
}  // namespace
std::span<const EnumName<TokenizerType>> enum_names(TokenizerType) { return kTokenizerTypes; }

TokenizerFile read_tokenizer_file(TokenizerType type, const std::string& path) {
  TokenizerFile f;
  f.type = type;
  if (type == TokenizerType::byte) return f;
  f.name = path;
  const bool sp = type == TokenizerType::sentencepiece;
  FF_CHECK(std::filesystem::is_regular_file(path), "tokenizer '%s': no such file; give %s", path.c_str(),
           sp ? "a SentencePiece .model (make one with: fivefold tokenizer train --input FILE --model_prefix PREFIX)"
              : "a Hugging Face tokenizer.json");
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  FF_CHECK(in.good() || in.eof(), "tokenizer '%s': cannot read the file", path.c_str());
  f.bytes = ss.str();
  return f;
}

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerFile& f) {
  switch (f.type) {
    case TokenizerType::byte: return std::make_unique<ByteTokenizer>();
    case TokenizerType::sentencepiece: return make_sentencepiece(f.name, f.bytes);
    case TokenizerType::bpe: return make_bpe_tokenizer(f.name, f.bytes);
  }
  FF_FAIL("unknown tokenizer type %d", static_cast<int>(f.type));
}

std::unique_ptr<Tokenizer> load_tokenizer(TokenizerType type, const std::string& path) {
  return make_tokenizer(read_tokenizer_file(type, path));
}

std::string tokenizer_file_to_json(const TokenizerFile& f) {
  return nlohmann::json{{"type", enum_to_string(f.type)}, {"name", f.name}, {"base64", base64_encode(f.bytes)}}.dump();
}

TokenizerFile tokenizer_file_from_json(const std::string& text, const std::string& source) {
  TokenizerFile f;
  try {
    const auto j = nlohmann::json::parse(text);
    FF_CHECK(enum_from_string(j.at("type").get<std::string>(), f.type), "unknown tokenizer type");
    f.name = j.at("name").get<std::string>();
    FF_CHECK(base64_decode(j.at("base64").get<std::string>(), f.bytes), "the tokenizer bytes are not valid base64");
  } catch (const std::exception& e) {
    FF_FAIL("%s: the embedded tokenizer is unreadable (%s); give --tokenizer_type and --tokenizer_path", source.c_str(),
            e.what());
  }
  return f;
}

// ---- byte ----

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids) const {
  std::string s;
  s.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    FF_CHECK(ids[i] >= 0 && ids[i] < kVocabSize, "byte tokenizer: token %d at position %zu is outside the "
             "vocabulary [0, %lld)", ids[i], i, (long long)kVocabSize);
    if (ids[i] != kEod) s.push_back(static_cast<char>(ids[i]));
  }
  return s;
}

// ---- SentencePiece ----

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // name: where the model came from (messages); bytes: the serialised .model.
  SentencePieceTokenizer(const std::string& name, const std::string& bytes) : path_(name) {
    auto st = sp_.LoadFromSerializedProto(absl::string_view(bytes.data(), bytes.size()));
    FF_CHECK(st.ok(), "tokenizer '%s': not a SentencePiece model: %s", name.c_str(), st.ToString().c_str());
    bos_ = sp_.bos_id();
    eod_ = sp_.eos_id();
    pad_ = sp_.pad_id();
  }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    auto st = sp_.Encode(absl::string_view(text.data(), text.size()), &ids);
    FF_CHECK(st.ok(), "tokenizer '%s': encode failed: %s", path_.c_str(), st.ToString().c_str());
    return {ids.begin(), ids.end()};
  }
  std::string decode(std::span<const int32_t> ids) const override {
    const int64_t V = vocab_size();
    for (size_t i = 0; i < ids.size(); ++i)
      FF_CHECK(ids[i] >= 0 && ids[i] < V, "tokenizer '%s': token %d at position %zu is outside the vocabulary "
               "[0, %lld)", path_.c_str(), ids[i], i, (long long)V);
    std::string out;
    auto st = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    FF_CHECK(st.ok(), "tokenizer '%s': decode failed: %s", path_.c_str(), st.ToString().c_str());
    return out;
  }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string describe() const override {
    return strprintf("sentencepiece %s (vocabulary %lld)", path_.c_str(), (long long)vocab_size());
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};

// Sends this process's stderr to a file for the lifetime of the object (the SentencePiece
// trainer logs every step there), restoring it afterwards.
class StderrToFile {
 public:
  explicit StderrToFile(const std::string& path) {
    fflush(stderr);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    saved_ = ::dup(2);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~StderrToFile() {
    if (saved_ < 0) return;
    fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
  }
  StderrToFile(const StderrToFile&) = delete;
  StderrToFile& operator=(const StderrToFile&) = delete;

 private:
  int saved_ = -1;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece(const std::string& name, const std::string& bytes) {
  return std::make_unique<SentencePieceTokenizer>(name, bytes);
}

std::vector<std::string> SentencePieceTrainConfig::validate() const {
  std::vector<std::string> e;
  if (input.empty()) e.push_back("--input is empty: give the text file(s) to train the tokenizer on");
  if (model_prefix.empty()) e.push_back("--model_prefix is empty: give the output path without .model");
  if (vocab_size < 300)
    e.push_back(strprintf("--vocab_size %lld: must be >= 300 (4 special + 256 byte-fallback tokens + pieces)",
                          (long long)vocab_size));
  if (model_type != "unigram" && model_type != "bpe")
    e.push_back("--model_type " + model_type + ": must be unigram or bpe");
  if (threads < 1) e.push_back(strprintf("--threads %lld: must be >= 1", (long long)threads));
  if (max_sentences < 0) e.push_back(strprintf("--max_sentences %lld: must be >= 0", (long long)max_sentences));
  return e;
}

void train_sentencepiece(const SentencePieceTrainConfig& c) {
  auto errors = c.validate();
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("tokenizer train:%s", all.c_str());
  }
  size_t start = 0;
  while (start <= c.input.size()) {
    size_t end = c.input.find(',', start);
    if (end == std::string::npos) end = c.input.size();
    const std::string f = c.input.substr(start, end - start);
    FF_CHECK(std::filesystem::is_regular_file(f), "tokenizer train --input: '%s' is not a readable file", f.c_str());
    start = end + 1;
  }
  const auto parent = std::filesystem::path(c.model_prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::unordered_map<std::string, std::string> args = {
      {"input", c.input},
      {"model_prefix", c.model_prefix},
      {"vocab_size", std::to_string(c.vocab_size)},
      {"model_type", c.model_type},
      {"num_threads", std::to_string(c.threads)},
      {"input_sentence_size", std::to_string(c.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"character_coverage", "0.9995"},
      {"unk_id", "0"}, {"bos_id", "1"}, {"eos_id", "2"}, {"pad_id", "3"},
  };
  sentencepiece::util::Status st;
  {
    StderrToFile quiet(c.model_prefix + ".log");
    st = sentencepiece::SentencePieceTrainer::Train(args);
  }
  FF_CHECK(st.ok(), "tokenizer train (model_prefix %s): %s; the library's log is in %s.log", c.model_prefix.c_str(),
           st.ToString().c_str(), c.model_prefix.c_str());
}

}  // namespace ff
