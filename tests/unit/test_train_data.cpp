// The trainer's data path in miniature (train/data.h): a text corpus and no tokenizer file give a
// SentencePiece model of model.vocab_size tokens and a preprocessed dataset beside the text, reused
// on the next run; batches are samples shifted by one token; the sample cursor round-trips and
// refuses another data set; a tokenizer larger than the model's vocabulary is an error.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/rng.h"
#include "train/data.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

std::string corpus(size_t bytes) {
  const char* words[] = {"and", "the", "LORD", "spake", "unto", "Moses,", "saying,", "Speak", "children", "of",
                         "Israel,", "that", "they", "bring", "me", "an", "offering:", "every", "man", "heart."};
  Rng rng(2, "corpus");
  std::string s;
  while (s.size() < bytes) {
    for (int i = 0; i < 12; ++i) s += std::string(words[rng.below(20)]) + (i == 11 ? "\n" : " ");
    if (rng.below(3) == 0) s += "\n";
  }
  return s;
}

// The one prepared dataset in dir whose name starts with `start` (PREFIX.idx; data.h names it).
std::string prepared_idx(const std::string& dir, const std::string& start) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(start, 0) == 0 && e.path().extension() == ".idx") found.push_back(e.path().string());
  }
  EXPECT_EQ(found.size(), 1u) << start;
  return found.empty() ? std::string() : found[0];
}

// A fresh folder holding corpus.txt of `bytes`, and a run reading it with a SentencePiece
// tokenizer of 300 pieces (trained on first use), sequences of 16, a 90/10 split.
RunConfig corpus_run(const std::string& dir, size_t bytes) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/corpus.txt") << corpus(bytes);
  RunConfig c;
  c.model.vocab_size = 300;
  c.model.seq_len = 16;
  c.train.data_path = dir + "/corpus.txt";
  c.train.tokenizer_path = dir + "/corpus-sp300.model";
  c.train.split = "90,10,0";
  return c;
}

TEST(TrainData, PreparesOnFirstUseAndReusesLater) {
  const std::string dir = (fs::temp_directory_path() / "fivefold_train_data").string();
  RunConfig c = corpus_run(dir, 80000);
  Communicator world = Communicator::world();
  TrainingData d = open_training_data(c, 64, 8, world, /*quiet=*/true);
  ASSERT_TRUE(fs::exists(dir + "/corpus-sp300.model"));
  const std::string idx = prepared_idx(dir, "corpus-sp300-txt-");  // the repeated corpus name is left out
  ASSERT_TRUE(fs::exists(idx));
  EXPECT_EQ(d.tokenizer->vocab_size(), 300);
  EXPECT_EQ(d.train->size(), 64);
  EXPECT_GT(d.unigram_entropy, 1.0);
  EXPECT_LT(d.unigram_entropy, std::log(300.0));
  std::vector<int32_t> tokens, targets;
  fill_batch(tokens, targets, *d.train, 5, 4, 16);
  ASSERT_EQ(tokens.size(), 64u);
  for (int b = 0; b < 4; ++b)
    for (int s = 0; s + 1 < 16; ++s) EXPECT_EQ(targets[static_cast<size_t>(b * 16 + s)], tokens[static_cast<size_t>(b * 16 + s + 1)]);
  // The text decodes back to corpus words (EOD decodes to nothing).
  EXPECT_NE(d.tokenizer->decode(tokens).find("the"), std::string::npos);
  // Second run: nothing is rebuilt.
  const auto t_idx = fs::last_write_time(idx);
  const auto t_model = fs::last_write_time(dir + "/corpus-sp300.model");
  TrainingData again = open_training_data(c, 64, 8, world, true);
  EXPECT_EQ(fs::last_write_time(idx), t_idx);
  EXPECT_EQ(fs::last_write_time(dir + "/corpus-sp300.model"), t_model);
  EXPECT_TRUE(dynamic_cast<const GptSamples&>(*again.train).blend().parts()[0]->loaded_from_cache());
  std::vector<int32_t> tokens2, targets2;
  fill_batch(tokens2, targets2, *again.train, 5, 4, 16);
  EXPECT_EQ(tokens, tokens2);
  // A model vocabulary smaller than the tokenizer's is refused, naming the field.
  c.model.vocab_size = 299;
  try {
    open_training_data(c, 64, 8, world, true);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.vocab_size"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// The validation windows are the same for every train.seed (the training order is not), and a
// request for more than the split holds gives each window once.
TEST(TrainData, ValidationWindowsDependOnNoSeedAndRepeatNone) {
  const std::string dir = (fs::temp_directory_path() / "fivefold_train_data_valid").string();
  RunConfig c = corpus_run(dir, 40000);
  Communicator world = Communicator::world();
  auto windows = [&](const SampleSource& s, int64_t n) {
    std::vector<std::vector<int32_t>> out;
    std::vector<int32_t> tokens, targets, positions;
    for (int64_t i = 0; i < n; ++i) {
      s.fill(tokens, targets, positions, i, 1, 16);
      out.push_back(tokens);
    }
    return out;
  };
  c.train.seed = 1;
  const TrainingData a = open_training_data(c, 64, 100000, world, true);
  c.train.seed = 2;
  const TrainingData b = open_training_data(c, 64, 100000, world, true);
  ASSERT_EQ(a.valid->size(), b.valid->size());
  ASSERT_LT(a.valid->size(), 100000);  // capped at one epoch of the split
  const auto wa = windows(*a.valid, a.valid->size()), wb = windows(*b.valid, b.valid->size());
  EXPECT_EQ(wa, wb);
  std::vector<std::vector<int32_t>> sorted = wa;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());  // no window twice
  EXPECT_NE(windows(*a.train, 8), windows(*b.train, 8));  // the training order does follow the seed
  fs::remove_all(dir);
}

// Prepared data is keyed by what made it (issue: corpus.jsonl trained on corpus.txt's tokens, and
// a second spm.model in another folder reused data made with the first).
TEST(TrainData, PreparedDataIsNeverReusedForAnotherSourceOrTokenizer) {
  const std::string dir = (fs::temp_directory_path() / "fivefold_prepared_keys").string();
  fs::remove_all(dir);
  fs::create_directories(dir + "/a");
  fs::create_directories(dir + "/b");
  std::string text_a = corpus(40000), text_b;
  Rng letters(3, "other-words");  // random words: a tokenizer of other pieces than the corpus's
  for (int i = 0; i < 6000; ++i) {
    for (uint64_t k = 0, n = 2 + letters.below(6); k < n; ++k) text_b += static_cast<char>('a' + letters.below(26));
    text_b += i % 9 == 8 ? "\n\n" : " ";
  }
  Communicator world = Communicator::world();
  RunConfig c;
  c.model.vocab_size = 300;
  c.model.seq_len = 16;
  c.train.split = "90,10,0";
  const auto first_text = [&](const RunConfig& rc) {
    TrainingData d = open_training_data(rc, 8, 8, world, true);
    std::vector<int32_t> tokens, targets;
    fill_batch(tokens, targets, *d.train, 0, 8, 16);
    return d.tokenizer->decode(tokens);
  };
  // Byte tokenizer: corpus.txt holds the corpus words, corpus.jsonl other words.
  std::ofstream(dir + "/corpus.txt") << text_a;
  {
    std::ofstream j(dir + "/corpus.jsonl");
    for (int i = 0; i < 400; ++i) j << "{\"text\": \"zebra quagga okapi zebra quagga okapi\"}\n";
  }
  c.model.vocab_size = 257;
  c.train.tokenizer_type = TokenizerType::byte;
  c.train.data_path = dir + "/corpus.txt";
  EXPECT_NE(first_text(c).find("the"), std::string::npos);
  c.train.data_path = dir + "/corpus.jsonl";
  const std::string from_jsonl = first_text(c);
  EXPECT_NE(from_jsonl.find("zebra"), std::string::npos) << from_jsonl;
  EXPECT_EQ(from_jsonl.find("the"), std::string::npos) << from_jsonl;
  // Two tokenizers named spm.model in two folders, each trained on its own text: the corpus is
  // prepared once for each, with each one's tokens (which decode with it to the corpus words).
  const auto first_tokens = [&](const RunConfig& rc) {
    TrainingData d = open_training_data(rc, 8, 8, world, true);
    std::vector<int32_t> tokens, targets;
    fill_batch(tokens, targets, *d.train, 0, 8, 16);
    EXPECT_NE(d.tokenizer->decode(tokens).find("the"), std::string::npos) << rc.train.tokenizer_path;
    return tokens;
  };
  c.model.vocab_size = 300;
  c.train.tokenizer_type = TokenizerType::sentencepiece;
  c.train.data_path = dir + "/corpus.txt";
  c.train.tokenizer_path = dir + "/a/spm.model";
  const std::vector<int32_t> with_a = first_tokens(c);
  std::ofstream(dir + "/b/other.txt") << text_b;
  RunConfig other = c;
  other.train.data_path = dir + "/b/other.txt";
  other.train.tokenizer_path = dir + "/b/spm.model";
  open_training_data(other, 8, 8, world, true);  // trains b/spm.model on other words
  c.train.tokenizer_path = dir + "/b/spm.model";
  EXPECT_NE(first_tokens(c), with_a);  // b's tokens, not a's
  int prepared = 0;
  for (const auto& e : fs::directory_iterator(dir))
    prepared += e.path().filename().string().rfind("corpus-spm-txt-", 0) == 0 && e.path().extension() == ".idx";
  EXPECT_EQ(prepared, 2);
  // A tokenizer replaced in place (same path, other content) prepares the data again.
  fs::copy_file(dir + "/a/spm.model", dir + "/b/spm.model", fs::copy_options::overwrite_existing);
  EXPECT_EQ(first_tokens(c), with_a);
  // The same tokenizer in a third folder (as train --init_from writes the model's own into each
  // run's folder) is the same tokenizer: its data is not prepared a third time.
  fs::create_directories(dir + "/c");
  fs::copy_file(dir + "/a/spm.model", dir + "/c/spm.model");
  c.train.tokenizer_path = dir + "/c/spm.model";
  EXPECT_EQ(first_tokens(c), with_a);
  prepared = 0;
  for (const auto& e : fs::directory_iterator(dir))
    prepared += e.path().filename().string().rfind("corpus-spm-txt-", 0) == 0 && e.path().extension() == ".idx";
  EXPECT_EQ(prepared, 2);
  fs::remove_all(dir);
}

TEST(TrainData, SampleCursorRoundTripsAndRefusesOtherData) {
  SampleCursor a;
  a.data = "data/kjv.txt";
  a.next_sample = 1234;
  SampleCursor b;
  b.data = "data/kjv.txt";
  b.load_cursor(a.save_cursor());
  EXPECT_EQ(b.next_sample, 1234);
  SampleCursor other;
  other.data = "data/other.txt";
  EXPECT_THROW(other.load_cursor(a.save_cursor()), Error);
  EXPECT_THROW(b.load_cursor(R"({"kind": "rng", "state": [1, 2, 3, 4]})"), Error);
  EXPECT_THROW(b.load_cursor("not json"), Error);
}

TEST(TrainData, BadDataPathsNameTheField) {
  RunConfig c;
  Communicator world = Communicator::world();
  for (const char* bad : {"/nonexistent/corpus.txt", "0.5 a b", "x /tmp"}) {
    c.train.data_path = bad;
    try {
      open_training_data(c, 8, 8, world, true);
      ADD_FAILURE() << "no error for " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("train.data_path"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace ff
