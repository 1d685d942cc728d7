#include "train/data.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/check.h"
#include "core/hash.h"
#include "io/atomic_file.h"
#include "io/file_lock.h"
#include "io/preprocess.h"
#include "train/preference_data.h"
#include "train/sft_data.h"
#include "train/steerlm.h"

namespace ff {

namespace fs = std::filesystem;

namespace {

// The validation split's shuffle seed: fixed, so that runs of every train.seed are validated on
// the same windows and their validation losses compare directly.
constexpr uint64_t kValidationSeed = 0x7a11da7e;

struct Source {
  double weight = 1;
  std::string path;
};

// "PATH" or "W1 PATH1 W2 PATH2 ...".
std::vector<Source> parse_sources(const std::string& spec) {
  std::vector<std::string> words;
  std::stringstream ss(spec);
  for (std::string w; ss >> w;) words.push_back(w);
  FF_CHECK(!words.empty(), "train.data_path is empty: give a text/JSONL file, an indexed-dataset prefix, or a blend "
           "\"W1 PATH1 W2 PATH2\"");
  if (words.size() == 1) return {{1.0, words[0]}};
  FF_CHECK(words.size() % 2 == 0, "train.data_path = \"%s\": a blend is pairs \"WEIGHT PATH\"; %zu words is not pairs",
           spec.c_str(), words.size());
  std::vector<Source> out;
  for (size_t i = 0; i < words.size(); i += 2) {
    size_t pos = 0;
    double w = -1;
    try {
      w = std::stod(words[i], &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    FF_CHECK(pos == words[i].size() && w >= 0 && std::isfinite(w), "train.data_path = \"%s\": weight \"%s\" (before %s) "
             "is not a non-negative number", spec.c_str(), words[i].c_str(), words[i + 1].c_str());
    out.push_back({w, words[i + 1]});
  }
  return out;
}

bool is_prefix(const std::string& p) { return fs::exists(p + ".idx") && fs::exists(p + ".bin"); }

// The identity of a source file: canonical path, bytes, modification time in ns.
nlohmann::json file_identity(const std::string& path) {
  nlohmann::json id = {{"path", fs::weakly_canonical(path).string()}};
  std::error_code ec;
  if (!fs::exists(path, ec)) return id;
  id["bytes"] = static_cast<int64_t>(fs::file_size(path, ec));
  id["mtime_ns"] = static_cast<int64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(fs::last_write_time(path, ec).time_since_epoch()).count());
  return id;
}

// A tokenizer by its contents (the hash of its file; empty for bytes): the same tokenizer written
// into several run folders (train --init_from materialises the model's own) is one tokenizer.
std::string tokenizer_identity(const TrainConfig& tc) {
  if (tc.tokenizer_type == TokenizerType::byte) return "";
  std::ifstream f(tc.tokenizer_path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return strprintf("%016llx", (unsigned long long)fnv1a(ss.str()));
}

// What a prepared dataset is made from (see data.h): the source, the tokenizer and the JSONL key.
nlohmann::json preparation_key(const std::string& text, const TrainConfig& tc) {
  return {{"source", file_identity(text)},
          {"tokenizer", {{"type", enum_to_string(tc.tokenizer_type)}, {"fnv1a", tokenizer_identity(tc)}}},
          {"json_key", tc.json_key}};
}

std::string prepared_prefix(const std::string& text, const TrainConfig& tc) {
  const fs::path p(text);
  const std::string stem = p.stem().string();
  const bool byte = tc.tokenizer_type == TokenizerType::byte;
  const std::string tag = byte ? "byte" : fs::path(tc.tokenizer_path).stem().string();
  const std::string name = tag.rfind(stem + "-", 0) == 0 ? tag : stem + "-" + tag;
  std::string ext = p.extension().string();
  if (!ext.empty()) ext = "-" + ext.substr(1);
  // The name's hash covers what identifies the data, not its version (sizes, times, contents):
  // a changed file is prepared again into the same prefix.
  const std::string identity = fs::weakly_canonical(text).string() + "\n" + enum_to_string(tc.tokenizer_type) + "\n" +
                               tokenizer_identity(tc) + "\n" + tc.json_key;
  const std::string hash = strprintf("%08llx", (unsigned long long)(fnv1a(identity) & 0xffffffffull));
  return (p.parent_path() / (name + ext + "-" + hash)).string();
}

// PREFIX.source.json: the preparation key of the files at PREFIX.
std::string key_file(const std::string& prefix) { return prefix + ".source.json"; }

bool prepared_from(const std::string& prefix, const nlohmann::json& key) {
  if (!is_prefix(prefix) || !fs::exists(key_file(prefix))) return false;
  std::ifstream f(key_file(prefix));
  try {
    return nlohmann::json::parse(f) == key;
  } catch (const std::exception&) {
    return false;  // a damaged key: prepare again
  }
}

void prepare(const RunConfig& c, const std::vector<Source>& sources, bool quiet) {
  const auto& tc = c.train;
  std::string texts;  // plain-text sources (SentencePiece trains on lines, so not on JSONL)
  for (const auto& s : sources) {
    const std::string ext = fs::path(s.path).extension().string();
    if (!is_prefix(s.path) && ext != ".jsonl" && ext != ".json") texts += (texts.empty() ? "" : ",") + s.path;
  }
  if (tc.tokenizer_type == TokenizerType::sentencepiece && !fs::exists(tc.tokenizer_path)) {
    FF_CHECK(!texts.empty(), "train.tokenizer_path '%s': no such file, and train.data_path has no plain-text file to "
             "train one on; make one with: fivefold tokenizer train --input FILE --model_prefix PREFIX",
             tc.tokenizer_path.c_str());
    const std::string& tp = tc.tokenizer_path;
    FF_CHECK(tp.size() > 6 && tp.compare(tp.size() - 6, 6, ".model") == 0, "train.tokenizer_path '%s': a SentencePiece "
             "model path must end in .model", tp.c_str());
    SentencePieceTrainConfig sc;
    sc.input = texts;
    sc.model_prefix = tp.substr(0, tp.size() - 6);
    sc.vocab_size = c.model.vocab_size;
    sc.threads = std::max(1u, std::thread::hardware_concurrency());
    if (!quiet) std::printf("training a SentencePiece tokenizer of %lld tokens on %s -> %s\n", (long long)sc.vocab_size,
                            texts.c_str(), tp.c_str());
    std::fflush(stdout);
    const FileLock lock(tp + ".lock", "the training of tokenizer " + tp);
    train_sentencepiece(sc);
  }
  std::unique_ptr<Tokenizer> tok;
  for (const auto& s : sources) {
    if (is_prefix(s.path)) continue;
    const std::string prefix = prepared_prefix(s.path, tc);
    const nlohmann::json key = preparation_key(s.path, tc);
    if (prepared_from(prefix, key)) continue;
    const FileLock lock(prefix + ".lock", "the preparation of " + prefix);
    if (!tok) tok = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
    PreprocessConfig pc;
    pc.input = s.path;
    pc.output_prefix = prefix;
    pc.json_key = tc.json_key;
    pc.tokenizer_type = tc.tokenizer_type;
    pc.tokenizer_path = tc.tokenizer_path;
    pc.progress = !quiet;
    if (!quiet) std::printf("preprocessing %s with %s -> %s.{bin,idx}\n", s.path.c_str(), tok->describe().c_str(), prefix.c_str());
    std::fflush(stdout);
    preprocess(pc, *tok);
    write_file_atomically(key_file(prefix), key.dump(1) + "\n");  // last: the files are complete
  }
}

// Token counts of a split's documents, over at most `limit` tokens.
std::vector<double> token_counts(const IndexedDataset& ds, DocRange docs, int64_t V, int64_t limit) {
  std::vector<double> counts(static_cast<size_t>(V), 0.0);
  std::vector<int32_t> buf;
  int64_t seen = 0;
  for (int64_t s = ds.document_index(docs.begin); s < ds.document_index(docs.end) && seen < limit; ++s) {
    buf = ds.sequence(s);
    for (int32_t t : buf)
      if (t >= 0 && t < V) counts[static_cast<size_t>(t)] += 1;
    seen += static_cast<int64_t>(buf.size());
  }
  return counts;
}

// Rank 0 trains the tokenizer / preprocesses; the others wait for its verdict.
void prepare_on_rank0(const RunConfig& c, const std::vector<Source>& sources, const Communicator& world, bool quiet) {
  std::string error;
  if (world.rank() == 0) {
    try {
      prepare(c, sources, quiet);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  int64_t failed = error.empty() ? 0 : 1;
  world.broadcast(&failed, sizeof(failed), 0);
  if (failed) {
    if (world.rank() == 0) throw Error(error);
    FF_FAIL("data preparation failed on rank 0");
  }
}

}  // namespace

EvalData open_eval_data(const RunConfig& c, const std::string& part, const Communicator& world, bool quiet) {
  const auto& tc = c.train;
  const std::vector<Source> sources = {{1.0, tc.data_path}};
  FF_CHECK(is_prefix(tc.data_path) || fs::is_regular_file(tc.data_path), "--data '%s' is neither an indexed dataset "
           "(%s.idx + %s.bin) nor a text/JSONL file", tc.data_path.c_str(), tc.data_path.c_str(), tc.data_path.c_str());
  const char* parts[] = {"train", "valid", "test"};
  int which = -1;
  for (int k = 0; k < 3; ++k)
    if (part == parts[k]) which = k;
  FF_CHECK(which >= 0 || part == "all", "--part %s: must be all, train, valid or test", part.c_str());
  prepare_on_rank0(c, sources, world, quiet);
  EvalData d;
  d.tokenizer = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
  const int64_t V = c.model.vocab_size;
  FF_CHECK(d.tokenizer->vocab_size() <= V, "the model's vocabulary (%lld) is smaller than the tokenizer's %lld entries "
           "(%s): this is not the model's tokenizer", (long long)V, (long long)d.tokenizer->vocab_size(),
           d.tokenizer->describe().c_str());
  const std::string prefix = is_prefix(tc.data_path) ? tc.data_path : prepared_prefix(tc.data_path, tc);
  auto ds = std::make_shared<const IndexedDataset>(prefix);
  DocRange docs{0, ds->num_documents()};
  if (which >= 0) docs = split_documents(tc.split, ds->num_documents(), "--split")[static_cast<size_t>(which)];
  FF_CHECK(docs.end > docs.begin, "--part %s of --split %s leaves '%s' (%lld documents) without documents", part.c_str(),
           tc.split.c_str(), prefix.c_str(), (long long)ds->num_documents());
  GptDatasetOptions o;
  o.seq_len = c.model.seq_len;
  o.seed = tc.seed;
  o.vocab_size = V;
  o.documents = docs;
  o.split_name = "eval-" + part;
  o.num_samples = 1;
  o.use_cache = false;
  d.windows = std::make_unique<GptDataset>(ds, o);
  // One epoch: the windows of the first epoch's stream that lie wholly inside it.
  d.samples = std::max<int64_t>(0, (d.windows->tokens_per_epoch() - 1) / c.model.seq_len);
  d.summary = strprintf("%s, %s documents [%lld, %lld): %lld tokens in %lld windows of %lld + 1; tokenizer %s",
                        prefix.c_str(), part.c_str(), (long long)docs.begin, (long long)docs.end,
                        (long long)d.windows->tokens_per_epoch(), (long long)d.samples, (long long)c.model.seq_len,
                        d.tokenizer->describe().c_str());
  return d;
}

TrainingData open_training_data(const RunConfig& c, int64_t train_samples, int64_t valid_samples,
                                const Communicator& world, bool quiet) {
  const auto& tc = c.train;
  if (tc.data_format == DataFormat::sft) {
    TrainingData d;
    d.tokenizer = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
    FF_CHECK(d.tokenizer->vocab_size() <= c.model.vocab_size, "model.vocab_size = %lld is smaller than the tokenizer's "
             "%lld entries (%s)", (long long)c.model.vocab_size, (long long)d.tokenizer->vocab_size(),
             d.tokenizer->describe().c_str());
    open_sft_data(c, d, d.summary);
    d.summary += "; tokenizer " + d.tokenizer->describe();
    return d;
  }
  if (tc.data_format == DataFormat::preference || tc.data_format == DataFormat::attributes) {
    TrainingData d;
    d.tokenizer = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
    FF_CHECK(d.tokenizer->vocab_size() <= c.model.vocab_size, "model.vocab_size = %lld is smaller than the tokenizer's "
             "%lld entries (%s)", (long long)c.model.vocab_size, (long long)d.tokenizer->vocab_size(),
             d.tokenizer->describe().c_str());
    if (tc.data_format == DataFormat::preference)
      open_preference_data(c, d, d.summary);
    else
      open_attribute_data(c, d, d.summary);
    d.summary += "; tokenizer " + d.tokenizer->describe();
    return d;
  }
  const auto sources = parse_sources(tc.data_path);
  for (const auto& s : sources)
    FF_CHECK(is_prefix(s.path) || fs::is_regular_file(s.path), "train.data_path: '%s' is neither an indexed dataset "
             "(%s.idx + %s.bin) nor a text/JSONL file%s", s.path.c_str(), s.path.c_str(), s.path.c_str(),
             s.path == "data/kjv.txt" ? " (the default corpus is written by scripts/prepare_corpus.sh)" : "");
  prepare_on_rank0(c, sources, world, quiet);
  TrainingData d;
  d.tokenizer = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
  const int64_t V = c.model.vocab_size, S = c.model.seq_len;
  FF_CHECK(d.tokenizer->vocab_size() <= V, "model.vocab_size = %lld is smaller than the tokenizer's %lld entries (%s); "
           "set model.vocab_size >= %lld", (long long)V, (long long)d.tokenizer->vocab_size(),
           d.tokenizer->describe().c_str(), (long long)d.tokenizer->vocab_size());
  std::vector<double> weights;
  for (const auto& s : sources) weights.push_back(s.weight);
  const auto need_train = BlendedDataset::samples_needed(weights, train_samples);
  const auto need_valid = BlendedDataset::samples_needed(weights, valid_samples);
  std::vector<std::unique_ptr<GptDataset>> train_parts, valid_parts;
  std::vector<double> p(static_cast<size_t>(V), 0.0);
  double wsum = 0;
  for (double w : weights) wsum += w;
  d.summary = "data:";
  for (size_t i = 0; i < sources.size(); ++i) {
    const std::string prefix = is_prefix(sources[i].path) ? sources[i].path : prepared_prefix(sources[i].path, tc);
    auto ds = std::make_shared<const IndexedDataset>(prefix);
    const auto splits = split_documents(tc.split, ds->num_documents(), "train.split");
    for (int k = 0; k < 2; ++k)
      FF_CHECK(splits[static_cast<size_t>(k)].end > splits[static_cast<size_t>(k)].begin,
               "train.split = \"%s\" leaves the %s split of '%s' (%lld documents) without documents; a text file's "
               "documents are its paragraphs (separated by blank lines): give more documents or change train.split",
               tc.split.c_str(), k == 0 ? "train" : "valid", prefix.c_str(), (long long)ds->num_documents());
    GptDatasetOptions o;
    o.seq_len = S;
    o.seed = tc.seed;
    o.vocab_size = V;
    o.documents = splits[0];
    o.split_name = "train";
    o.num_samples = std::max<int64_t>(1, need_train[i]);
    train_parts.push_back(std::make_unique<GptDataset>(ds, o));
    o.documents = splits[1];
    o.split_name = "valid";
    o.num_samples = std::max<int64_t>(1, need_valid[i]);
    o.seed = kValidationSeed;  // the same validation windows whatever train.seed
    valid_parts.push_back(std::make_unique<GptDataset>(ds, o));
    auto counts = token_counts(*ds, splits[0], V, 16 << 20);
    double n = 0;
    for (double x : counts) n += x;
    for (size_t t = 0; t < counts.size(); ++t) p[t] += sources[i].weight / wsum * counts[t] / std::max(n, 1.0);
    d.summary += strprintf(" %s%s (%lld documents, %lld tokens; train %lld / valid %lld tokens)",
                           sources.size() > 1 ? strprintf("%g x ", sources[i].weight).c_str() : "", prefix.c_str(),
                           (long long)ds->num_documents(), (long long)ds->num_tokens(),
                           (long long)train_parts.back()->tokens_per_epoch(),
                           (long long)valid_parts.back()->tokens_per_epoch());
  }
  for (double x : p)
    if (x > 0) d.unigram_entropy -= x * std::log(x);
  d.summary += "; tokenizer " + d.tokenizer->describe();
  d.train = std::make_unique<GptSamples>(std::make_unique<BlendedDataset>(std::move(train_parts), weights, train_samples));
  // Each validation window at most once: no more samples than the parts hold in one epoch (for a
  // blend, than the part that runs out first allows at its weight).
  double fit = static_cast<double>(valid_samples);
  for (size_t i = 0; i < valid_parts.size(); ++i) {
    const GptDataset& v = *valid_parts[i];
    const double epoch = static_cast<double>(v.epochs() > 1 ? v.epoch_begin(1) : v.size());
    fit = std::min(fit, std::floor(epoch * wsum / weights[i]));
  }
  const int64_t valid_total = std::max<int64_t>(1, static_cast<int64_t>(fit));
  d.valid = std::make_unique<GptSamples>(std::make_unique<BlendedDataset>(std::move(valid_parts), weights, valid_total));
  return d;
}

void GptSamples::fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
                      int64_t first, int64_t B, int64_t S) const {
  const BlendedDataset& ds = *ds_;
  positions.clear();
  tokens.resize(static_cast<size_t>(B * S));
  targets.resize(static_cast<size_t>(B * S));
  std::vector<int32_t> buf(static_cast<size_t>(S + 1));
  for (int64_t b = 0; b < B; ++b) {
    ds.get((first + b) % ds.size(), buf.data());
    std::copy(buf.begin(), buf.end() - 1, tokens.begin() + b * S);
    std::copy(buf.begin() + 1, buf.end(), targets.begin() + b * S);
  }
}

std::string SampleCursor::save_cursor() const {
  return nlohmann::json{{"kind", "gpt-samples"}, {"next_sample", next_sample}, {"data", data}}.dump();
}

void SampleCursor::load_cursor(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    FF_FAIL("checkpoint data cursor is not valid JSON: %s", e.what());
  }
  FF_CHECK(j.is_object() && j.value("kind", "") == "gpt-samples" && j.contains("next_sample") &&
               j["next_sample"].is_number_integer() && j["next_sample"].get<int64_t>() >= 0,
           "checkpoint data cursor %s is not a GPT sample cursor; was the checkpoint written with another data pipeline?",
           text.substr(0, 200).c_str());
  const std::string saved = j.value("data", "");
  FF_CHECK(saved == data, "checkpoint data cursor is for train.data_path \"%s\", this run reads \"%s\"; resume with the "
           "same data", saved.c_str(), data.c_str());
  next_sample = j["next_sample"].get<int64_t>();
}

}  // namespace ff
