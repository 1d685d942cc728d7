// fivefold preprocess: JSONL and plain text to an indexed dataset with EOD per document, the same
// bytes with 1 or 4 worker threads and any chunk size; bad input (malformed JSON, a missing key,
// empty documents, empty input) is an error naming the file and line, and leaves no output.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "io/indexed_dataset.h"
#include "io/preprocess.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("fivefold_pre_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

PreprocessConfig config(const std::string& input, const std::string& out) {
  PreprocessConfig c;
  c.input = input;
  c.output_prefix = out;
  c.tokenizer_type = TokenizerType::byte;
  c.progress = false;
  return c;
}

TEST(Preprocess, JsonlDocumentsWithEod) {
  const std::string dir = temp_dir("jsonl");
  std::ofstream(dir + "/in.jsonl") << R"({"text": "In the beginning", "id": 1})" << "\n\n"
                                   << R"({"id": 2, "text": "caf\u00e9\n"})" << "\n";
  ByteTokenizer tok;
  auto stats = preprocess(config(dir + "/in.jsonl", dir + "/out"), tok);
  EXPECT_EQ(stats.documents, 2);
  EXPECT_EQ(stats.tokens, 16 + 1 + 6 + 1);
  IndexedDataset ds(dir + "/out");
  EXPECT_EQ(ds.dtype(), TokenDType::u16);
  ASSERT_EQ(ds.num_documents(), 2);
  auto d0 = ds.sequence(0), d1 = ds.sequence(1);
  EXPECT_EQ(d0.back(), ByteTokenizer::kEod);
  EXPECT_EQ(tok.decode(d0), "In the beginning");
  EXPECT_EQ(tok.decode(d1), "caf\xc3\xa9\n");
  // Another key.
  std::ofstream(dir + "/k.jsonl") << R"({"content": "abc"})" << "\n";
  auto c = config(dir + "/k.jsonl", dir + "/k");
  c.json_key = "content";
  c.append_eod = false;
  preprocess(c, tok);
  EXPECT_EQ(IndexedDataset(dir + "/k").sequence(0), (std::vector<int32_t>{'a', 'b', 'c'}));
  fs::remove_all(dir);
}

TEST(Preprocess, TextParagraphsAreDocumentsAndThreadsDoNotChangeTheBytes) {
  const std::string dir = temp_dir("text");
  std::string text;
  for (int i = 0; i < 3000; ++i) {
    text += "Genesis " + std::to_string(i) + "\n\n";
    for (int v = 1; v <= 1 + i % 4; ++v) text += "  " + std::to_string(v) + " And God said, Let there be light.\n";
    text += "\n";
  }
  std::ofstream(dir + "/in.txt") << text;
  ByteTokenizer tok;
  auto c = config(dir + "/in.txt", dir + "/one");
  c.workers = 1;
  auto s1 = preprocess(c, tok);
  EXPECT_EQ(s1.documents, 6000);
  c.workers = 4;
  c.chunk_bytes = 777;  // many small work items, finished out of order
  c.output_prefix = dir + "/four";
  auto s4 = preprocess(c, tok);
  EXPECT_EQ(s4.tokens, s1.tokens);
  EXPECT_EQ(read_file(dir + "/one.bin"), read_file(dir + "/four.bin"));
  EXPECT_EQ(read_file(dir + "/one.idx"), read_file(dir + "/four.idx"));
  IndexedDataset ds(dir + "/one");
  EXPECT_EQ(tok.decode(ds.sequence(0)), "Genesis 0\n");
  EXPECT_EQ(tok.decode(ds.sequence(3)), "  1 And God said, Let there be light.\n  2 And God said, Let there be light.\n");
  fs::remove_all(dir);
}

void expect_error(const std::string& dir, const std::string& file, const std::string& content, PreprocessConfig c,
                  const std::string& needle) {
  std::ofstream(dir + "/" + file) << content;
  c.input = dir + "/" + file;
  c.output_prefix = dir + "/bad";
  ByteTokenizer tok;
  try {
    preprocess(c, tok);
    ADD_FAILURE() << "no error for " << file << "; expected: " << needle;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_NE(m.find(file), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(dir + "/bad.idx"));
  EXPECT_FALSE(fs::exists(dir + "/bad.bin.tmp"));
}

TEST(Preprocess, BadInputNamesFileAndLine) {
  const std::string dir = temp_dir("bad");
  const auto c = config("", "");
  expect_error(dir, "a.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"ok\"\n", c, "a.jsonl:2: not valid JSON");
  expect_error(dir, "b.jsonl", "{\"text\": \"ok\"}\n\n{\"body\": \"x\"}\n", c, "b.jsonl:3: no \"text\" key");
  expect_error(dir, "c.jsonl", "{\"text\": 5}\n", c, "c.jsonl:1: \"text\" is not a string");
  expect_error(dir, "d.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"\"}\n", c, "d.jsonl:2: empty document");
  expect_error(dir, "e.txt", "", c, "no documents");
  expect_error(dir, "f.txt", "\n\n  \n", c, "no documents");
  expect_error(dir, "g.jsonl", "", c, "no documents");
  auto skip = c;
  skip.skip_empty = true;
  expect_error(dir, "h.jsonl", "{\"text\": \"\"}\n", skip, "1 empty ones skipped");
  std::ofstream(dir + "/i.jsonl") << "{\"text\": \"\"}\n{\"text\": \"x\"}\n";
  skip.input = dir + "/i.jsonl";
  skip.output_prefix = dir + "/i";
  ByteTokenizer tok;
  auto s = preprocess(skip, tok);
  EXPECT_EQ(s.documents, 1);
  EXPECT_EQ(s.skipped_empty, 1);
  try {
    preprocess(config(dir + "/missing.txt", dir + "/m"), tok);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ff
