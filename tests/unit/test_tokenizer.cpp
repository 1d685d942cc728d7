// Tokenizers: decode(encode(t)) == t on KJV-like text and odd Unicode for each kind; the byte-level
// BPE gives hand-derived reference ids on a small tokenizer.json written here (merges competing by
// rank, the GPT-2 and Llama-3 pre-tokenizer splits, added tokens); bad files give clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/rng.h"
#include "io/tokenizer.h"
#include "test_util.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

// Verses in the KJV's layout: chapter headings, numbered verses, wrapped lines, punctuation.
std::string kjv_like(size_t bytes, uint64_t seed = 1) {
  const char* words[] = {"And", "the", "LORD", "God", "said", "unto", "Moses,", "Behold,", "I", "will", "send", "thee",
                         "into", "land", "of", "Egypt;", "and", "they", "shall", "know", "that", "am", "he.", "Israel",
                         "children", "thereof:", "wherefore", "hath", "spoken", "saying,", "Let", "my", "people", "go."};
  Rng rng(seed, "kjv-like");
  std::string s;
  int chapter = 1, verse = 1;
  while (s.size() < bytes) {
    if (verse == 1) s += "\nExodus " + std::to_string(chapter) + "\n\n";
    std::string line = "  " + std::to_string(verse) + " ";
    const int n = 8 + static_cast<int>(rng.below(20));
    for (int i = 0; i < n; ++i) {
      line += words[rng.below(sizeof(words) / sizeof(words[0]))];
      line += i + 1 < n ? " " : "\n";
      if (line.size() > 70 && i + 1 < n) {
        s += line.substr(0, line.size() - 1) + "\n";
        line.clear();
      }
    }
    s += line;
    if (++verse > 20) { verse = 1; ++chapter; }
  }
  return s;
}

const std::string kOddUnicode =
    "naïve café — 日本語のテキスト 🙂👍🏽 \t tabs  double  spaces\r\nCRLF Ωmega≈ç√ e\xcc\x81 (combining) "
    "\xe2\x80\x8d zero-width joiner, عربي RTL, ẞ ß İı, ﬁ ligature, \xef\xbb\xbf BOM, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 123456789 ½ Ⅻ";

TEST(ByteTokenizer, RoundTripsAnyBytesAndHasEod) {
  ByteTokenizer t;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  for (const std::string& s : {kjv_like(5000), kOddUnicode, all, std::string()}) EXPECT_EQ(t.decode(t.encode(s)), s);
  EXPECT_EQ(t.vocab_size(), 257);
  EXPECT_EQ(t.eod(), 256);
  std::vector<int32_t> with_eod = {'a', 256, 'b'};
  EXPECT_EQ(t.decode(with_eod), "ab");
  std::vector<int32_t> bad = {'a', 300};
  try {
    t.decode(bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

class SentencePiece : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = test::fresh_dir("tok_spm");
    std::ofstream(dir_ + "/corpus.txt") << kjv_like(60000);
    SentencePieceTrainConfig c;
    c.input = dir_ + "/corpus.txt";
    c.model_prefix = dir_ + "/sp";
    c.vocab_size = 320;
    train_sentencepiece(c);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string dir_;
};
std::string SentencePiece::dir_;

TEST_F(SentencePiece, TrainsAndRoundTripsCorpusAndOddUnicode) {
  ASSERT_TRUE(fs::exists(dir_ + "/sp.model"));
  auto t = load_tokenizer(TokenizerType::sentencepiece, dir_ + "/sp.model");
  EXPECT_EQ(t->vocab_size(), 320);
  EXPECT_EQ(t->bos(), 1);
  EXPECT_EQ(t->eod(), 2);
  EXPECT_EQ(t->pad(), 3);
  const std::string unseen = kjv_like(20000, 7);  // other verses than the training text
  for (const std::string& s : {unseen, kOddUnicode, std::string("  leading and trailing  \n\n"), std::string()}) {
    auto ids = t->encode(s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < t->vocab_size());
    EXPECT_EQ(t->decode(ids), s);
  }
  // Even with few learnt pieces (320 - 4 special - 256 byte-fallback tokens) it compresses the text.
  EXPECT_LT(static_cast<double>(t->encode(unseen).size()), 0.8 * static_cast<double>(unseen.size()));
}

TEST_F(SentencePiece, MissingOrBadModelFilesNameTheFile) {
  try {
    load_tokenizer(TokenizerType::sentencepiece, dir_ + "/nope.model");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.model"), std::string::npos) << e.what();
  }
  std::ofstream(dir_ + "/garbage.model") << "this is not a protobuf";
  try {
    load_tokenizer(TokenizerType::sentencepiece, dir_ + "/garbage.model");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("garbage.model"), std::string::npos) << e.what();
  }
}

// ---- byte-level BPE ----

// GPT-2's bytes_to_unicode, written out independently of the implementation.
std::string byte_char(int b) {
  int cp = b;
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else { s += static_cast<char>(0xc0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3f)); }
  return s;
}

// Vocabulary: id b = the character of byte b; then merges in rank order get ids 256, 257, ...;
// "<|endoftext|>" is the added token after them.
std::string write_tokenizer_json(const std::string& dir, const std::string& pre, const std::vector<std::string>& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  int id = 256;
  nlohmann::json m = nlohmann::json::array();
  for (const auto& mg : merges) {
    const auto sp = mg.find(' ');
    const std::string merged = mg.substr(0, sp) + mg.substr(sp + 1);
    if (!vocab.contains(merged)) vocab[merged] = id++;
    m.push_back(mg);
  }
  nlohmann::json pre_tok;
  if (pre == "gpt2") {
    pre_tok = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    pre_tok = {{"type", "Sequence"},
               {"pretokenizers",
                {{{"type", "Split"},
                  {"pattern", {{"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                         "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                  {"behavior", "Isolated"}, {"invert", false}},
                 {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  }
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", {{{"id", id}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false},
                         {"rstrip", false}, {"normalized", false}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tok},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"vocab", vocab}, {"merges", m}}}};
  const std::string path = dir + "/" + pre + "-tokenizer.json";
  std::ofstream(path) << j.dump(1);
  return path;
}

int32_t b(char c) { return static_cast<unsigned char>(c); }

TEST(BpeTokenizer, ReferenceIdsWithMergesCompetingByRank) {
  const std::string dir = test::fresh_dir("tok_bpe");
  // ids: he 256, ll 257, hell 258, Ġw 259, or 260, Ġwor 261, el 262, ĠĠ 263, 't 264, n' 265, 34 266,
  // (h 267, ĊĊ 268; <|endoftext|> 269.
  const std::vector<std::string> merges = {"h e", "l l", "he ll", "\xc4\xa0 w", "o r", "\xc4\xa0w or", "e l",
                                           "\xc4\xa0 \xc4\xa0", "' t", "n '", "3 4", "( h", "\xc4\x8a \xc4\x8a"};
  auto t = load_tokenizer(TokenizerType::bpe, write_tokenizer_json(dir, "gpt2", merges));
  EXPECT_EQ(t->vocab_size(), 270);
  EXPECT_EQ(t->eod(), 269);
  using V = std::vector<int32_t>;
  // "hello": h-e (rank 0) first, then l-l (1), then he-ll (2); "o" stays.
  EXPECT_EQ(t->encode("hello"), (V{258, b('o')}));
  // " world": Ġ-w (3), then o-r (4), then Ġw-or (5).
  EXPECT_EQ(t->encode(" world"), (V{261, b('l'), b('d')}));
  // "ell": e-l (6) loses to l-l (1).
  EXPECT_EQ(t->encode("ell"), (V{b('e'), 257}));
  // "lll": equal ranks merge left to right.
  EXPECT_EQ(t->encode("lll"), (V{257, b('l')}));
  // The added token is cut out before pre-tokenization.
  EXPECT_EQ(t->encode("hello<|endoftext|>ell"), (V{258, b('o'), 269, b('e'), 257}));
  // GPT-2 split: "don" | "'t": the n-' merge (rank 9) cannot cross the boundary; "'t" merges.
  EXPECT_EQ(t->encode("don't"), (V{b('d'), b('o'), b('n'), 264}));
  // \s+(?!\S): "a  b" -> "a" " " " b" (no ĠĠ); trailing "  " stays whole (ĠĠ).
  EXPECT_EQ(t->encode("a  b"), (V{b('a'), b(' '), b(' '), b('b')}));
  EXPECT_EQ(t->encode("a  "), (V{b('a'), 263}));
  // GPT-2 keeps digit runs whole (3-4 merges); "(" and "h" are separate words; "\n\n" before a
  // letter splits into "\n" "\n".
  EXPECT_EQ(t->encode("12345"), (V{b('1'), b('2'), 266, b('5')}));
  EXPECT_EQ(t->encode("(h"), (V{b('('), b('h')}));
  EXPECT_EQ(t->encode("a\n\nb"), (V{b('a'), b('\n'), b('\n'), b('b')}));
  fs::remove_all(dir);
}

TEST(BpeTokenizer, Llama3PreTokenizerSplits) {
  const std::string dir = test::fresh_dir("tok_bpe3");
  const std::vector<std::string> merges = {"h e", "l l", "he ll", "\xc4\xa0 w", "o r", "\xc4\xa0w or", "e l",
                                           "\xc4\xa0 \xc4\xa0", "' t", "n '", "3 4", "( h", "\xc4\x8a \xc4\x8a"};
  auto t = load_tokenizer(TokenizerType::bpe, write_tokenizer_json(dir, "llama3", merges));
  using V = std::vector<int32_t>;
  EXPECT_EQ(t->encode("hello world"), (V{258, b('o'), 261, b('l'), b('d')}));
  // Digits in groups of at most three: "123" "45", so 3-4 cannot merge.
  EXPECT_EQ(t->encode("12345"), (V{b('1'), b('2'), b('3'), b('4'), b('5')}));
  // One non-letter may lead a word: "(h" is one word and merges.
  EXPECT_EQ(t->encode("(h"), (V{267}));
  // \s*[\r\n]+: "\n\n" is one word (ĊĊ).
  EXPECT_EQ(t->encode("a\n\nb"), (V{b('a'), 268, b('b')}));
  // Contractions are case-insensitive: "DON" | "'T".
  EXPECT_EQ(t->encode("DON'T"), (V{b('D'), b('O'), b('N'), b('\''), b('T')}));
  EXPECT_EQ(t->encode("don't"), (V{b('d'), b('o'), b('n'), 264}));
  fs::remove_all(dir);
}

TEST(BpeTokenizer, RoundTripsCorpusOddUnicodeAndInvalidUtf8) {
  const std::string dir = test::fresh_dir("tok_bpe_rt");
  std::string invalid = "ok \xff\xfe \xc3 \xed\xa0\x80 end";  // stray bytes, truncated and surrogate sequences
  for (const char* pre : {"gpt2", "llama3"}) {
    auto t = load_tokenizer(TokenizerType::bpe, write_tokenizer_json(dir, pre, {"h e", "t he", "\xc4\xa0 the", "a n", "an d"}));
    for (const std::string& s : {kjv_like(20000), kOddUnicode, invalid, std::string("<|endoftext|>x<|endoftext|>")})
      EXPECT_EQ(t->decode(t->encode(s)), s) << pre;
  }
  fs::remove_all(dir);
}

TEST(BpeTokenizer, BadFilesGiveClearErrors) {
  const std::string dir = test::fresh_dir("tok_bpe_bad");
  auto expect_error = [&](const std::string& content, const std::string& needle) {
    const std::string p = dir + "/t.json";
    std::ofstream(p) << content;
    try {
      load_tokenizer(TokenizerType::bpe, p);
      ADD_FAILURE() << "no error for " << content.substr(0, 80);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("t.json"), std::string::npos) << e.what();
    }
  };
  expect_error("{not json", "not valid JSON");
  expect_error(R"({"model": {"type": "WordPiece"}})", "BPE");
  expect_error(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}})",
               "Metaspace");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]},
                   "pre_tokenizer": {"type": "ByteLevel"}})", "merge 0");
  expect_error(R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                   "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"}}})", "regex");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ff
