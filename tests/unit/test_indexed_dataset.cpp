// Megatron indexed datasets: a file written by hand from the format description reads back field
// by field; fivefold's writer produces exactly those bytes; truncated, corrupted and foreign files
// give errors naming the file and the problem; a fuzzer never gets a crash or a wild read.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/rng.h"
#include "io/indexed_dataset.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("fivefold_idx_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Three documents: [5, 6, 7], [] + [8] (two sequences, the first empty), [65535, 0] as uint16,
// laid out by hand from specs/formats.md.
struct HandMade {
  std::string idx, bin;
  HandMade() {
    const std::vector<std::vector<uint16_t>> seqs = {{5, 6, 7}, {}, {8}, {65535, 0}};
    idx.append("MMIDIDX\0\0", 9);
    put<uint64_t>(idx, 1);        // version
    put<uint8_t>(idx, 8);         // dtype code: uint16
    put<uint64_t>(idx, 4);        // S
    put<uint64_t>(idx, 4);        // D = documents + 1
    for (const auto& s : seqs) put<int32_t>(idx, static_cast<int32_t>(s.size()));
    int64_t ptr = 0;
    for (const auto& s : seqs) {
      put<int64_t>(idx, ptr);
      ptr += 2 * static_cast<int64_t>(s.size());
    }
    for (int64_t d : {0, 1, 3, 4}) put<int64_t>(idx, d);
    for (const auto& s : seqs)
      for (uint16_t t : s) put<uint16_t>(bin, t);
  }
};

TEST(IndexedDataset, ReadsAFileWrittenByHandFromTheFormat) {
  const std::string dir = temp_dir("hand");
  HandMade h;
  write_file(dir + "/d.idx", h.idx);
  write_file(dir + "/d.bin", h.bin);
  IndexedDataset ds(dir + "/d");
  EXPECT_EQ(ds.dtype(), TokenDType::u16);
  EXPECT_EQ(ds.num_sequences(), 4);
  EXPECT_EQ(ds.num_documents(), 3);
  EXPECT_EQ(ds.num_tokens(), 6);
  EXPECT_EQ(ds.sequence_length(0), 3);
  EXPECT_EQ(ds.sequence_length(1), 0);
  EXPECT_EQ(ds.sequence_pointer(2), 6);
  EXPECT_EQ(ds.sequence_pointer(3), 8);
  EXPECT_EQ(ds.document_index(0), 0);
  EXPECT_EQ(ds.document_index(2), 3);
  EXPECT_EQ(ds.document_index(3), 4);
  EXPECT_EQ(ds.sequence(0), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_TRUE(ds.sequence(1).empty());
  EXPECT_EQ(ds.sequence(3), (std::vector<int32_t>{65535, 0}));
  int32_t two[2];
  ds.read(0, 1, 2, two);
  EXPECT_EQ(two[0], 6);
  EXPECT_EQ(two[1], 7);
  fs::remove_all(dir);
}

TEST(IndexedDataset, WriterProducesTheSameBytesAsTheFormatDescription) {
  const std::string dir = temp_dir("writer");
  {
    IndexedDatasetWriter w(dir + "/d", TokenDType::u16);
    w.add_document(std::vector<int32_t>{5, 6, 7});
    w.add_sequence({});
    w.add_sequence(std::vector<int32_t>{8});
    w.end_document();
    w.add_document(std::vector<int32_t>{65535, 0});
    EXPECT_FALSE(fs::exists(dir + "/d.idx"));  // nothing in place before finish()
    w.finish();
  }
  HandMade h;
  EXPECT_EQ(read_file(dir + "/d.idx"), h.idx);
  EXPECT_EQ(read_file(dir + "/d.bin"), h.bin);
  EXPECT_FALSE(fs::exists(dir + "/d.bin.tmp"));
  // int32 for large vocabularies, with the same layout.
  EXPECT_EQ(dtype_for_vocab(65499), TokenDType::u16);
  EXPECT_EQ(dtype_for_vocab(65500), TokenDType::i32);
  {
    IndexedDatasetWriter w(dir + "/e", TokenDType::i32);
    w.add_document(std::vector<int32_t>{100000, 1});
    w.finish();
  }
  const std::string idx = read_file(dir + "/e.idx");
  ASSERT_EQ(idx.size(), 34u + 12 + 16);
  EXPECT_EQ(idx[17], 4);
  IndexedDataset e(dir + "/e");
  EXPECT_EQ(e.sequence(0), (std::vector<int32_t>{100000, 1}));
  // A token that does not fit the dtype is refused.
  IndexedDatasetWriter w(dir + "/f", TokenDType::u16);
  EXPECT_THROW(w.add_document(std::vector<int32_t>{70000}), Error);
  fs::remove_all(dir);
}

// Writes idx/bin, opens them, and checks the error names the file and contains `needle`.
void expect_error(const std::string& dir, const std::string& idx, const std::string& bin, const std::string& needle) {
  write_file(dir + "/bad.idx", idx);
  write_file(dir + "/bad.bin", bin);
  try {
    IndexedDataset ds(dir + "/bad");
    ADD_FAILURE() << "no error; expected: " << needle;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_NE(m.find("bad.idx"), std::string::npos) << m;
  }
}

TEST(IndexedDataset, BadFilesGiveErrorsNamingFileAndProblem) {
  const std::string dir = temp_dir("bad");
  HandMade h;
  auto with = [&](size_t at, const std::string& bytes) {
    std::string s = h.idx;
    s.replace(at, bytes.size(), bytes);
    return s;
  };
  auto u64 = [](uint64_t v) { std::string s; put(s, v); return s; };
  auto i64 = [](int64_t v) { std::string s; put(s, v); return s; };
  expect_error(dir, "", h.bin, "truncated");
  expect_error(dir, h.idx.substr(0, 20), h.bin, "truncated");
  expect_error(dir, h.idx.substr(0, h.idx.size() - 3), h.bin, "truncated or corrupted");
  expect_error(dir, with(0, "MMIDIDY"), h.bin, "wrong magic");
  expect_error(dir, with(9, u64(2)), h.bin, "version 2");
  expect_error(dir, with(17, std::string(1, '\x09')), h.bin, "dtype code 9");
  expect_error(dir, with(17, std::string(1, '\x07')), h.bin, "float32");
  expect_error(dir, with(18, u64(1ull << 60)), h.bin, "do not fit");
  expect_error(dir, with(26, u64(3)), h.bin, "does not match");
  expect_error(dir, with(34, std::string("\xff\xff\xff\xff", 4)), h.bin, "negative length");
  expect_error(dir, with(34 + 16 + 8, i64(1000)), h.bin, "lies outside");
  expect_error(dir, with(34 + 16 + 8, i64(-2)), h.bin, "lies outside");
  expect_error(dir, h.idx, h.bin.substr(0, 10), "lies outside");                 // truncated .bin
  expect_error(dir, with(34 + 16 + 24, i64(4)), h.bin, "the pointers overlap");  // sequence 3 inside 2
  expect_error(dir, with(34 + 48, i64(1)), h.bin, "starts at 1");                // doc[0] != 0
  expect_error(dir, with(34 + 48 + 16, i64(0)), h.bin, "out of order");          // 0, 1, 0, 4
  expect_error(dir, with(34 + 48 + 24, i64(3)), h.bin, "ends at 3");             // doc[D-1] != S
  // Missing files name the missing one.
  fs::remove(dir + "/bad.bin");
  try {
    IndexedDataset ds(dir + "/bad");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.bin"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// Random mutations of a valid index (bit flips, random words at field offsets, truncation,
// extension): opening either fails with ff::Error or succeeds, and then every sequence reads
// without leaving the mapped files (run under ASan to see the latter directly).
TEST(IndexedDataset, FuzzedIndexNeverCrashes) {
  const std::string dir = temp_dir("fuzz");
  std::string idx, bin;
  {
    IndexedDatasetWriter w(dir + "/base", TokenDType::u16);
    Rng rng(5, "fuzz-base");
    for (int d = 0; d < 12; ++d) {
      const int nseq = 1 + static_cast<int>(rng.below(2));
      for (int s = 0; s < nseq; ++s) {
        std::vector<int32_t> t(rng.below(9));
        for (auto& x : t) x = static_cast<int32_t>(rng.below(1000));
        w.add_sequence(t);
      }
      w.end_document();
    }
    w.finish();
    idx = read_file(dir + "/base.idx");
    bin = read_file(dir + "/base.bin");
  }
  write_file(dir + "/m.bin", bin);
  Rng rng(11, "fuzz");
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string m = idx;
    const int kind = static_cast<int>(rng.below(4));
    const int edits = 1 + static_cast<int>(rng.below(3));
    for (int e = 0; e < edits; ++e) {
      if (kind == 0 && !m.empty()) {
        m[rng.below(m.size())] ^= static_cast<char>(1 << rng.below(8));
      } else if (kind == 1 && m.size() >= 8) {
        const size_t at = rng.below(m.size() - 7);
        const uint64_t v = rng.below(3) == 0 ? rng.next_u64() : rng.below(64);
        std::memcpy(m.data() + at, &v, 8);
      } else if (kind == 2) {
        m.resize(rng.below(m.size() + 1));
      } else {
        m.append(rng.below(24), static_cast<char>(rng.below(256)));
      }
    }
    write_file(dir + "/m.idx", m);
    try {
      IndexedDataset ds(dir + "/m");
      int64_t sum = 0;
      for (int64_t s = 0; s < ds.num_sequences(); ++s)
        for (int32_t t : ds.sequence(s)) sum += t;
      for (int64_t d = 0; d <= ds.num_documents(); ++d) sum += ds.document_index(d);
      (void)sum;
      ++opened;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 500);  // most mutations are caught
  EXPECT_GT(opened, 0);      // some are harmless (e.g. token-value changes are not index damage)
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ff
