// safetensors reader/writer: round trip, and bad files give clear errors, never a crash.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/rng.h"
#include "core/check.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace ff {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("fivefold_test_" + name)).string();
}

std::vector<char> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}
void write_all(const std::string& p, const std::vector<char>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
}

TEST(Safetensors, RoundTripIsBitExact) {
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f}, b = {42.0f};
  const std::string p = temp_path("rt.safetensors");
  write_safetensors(p, {{"a", {2, 3}, a.data()}, {"b", {1}, b.data()}}, {{"k", "v"}});
  SafetensorsFile f(p);
  EXPECT_EQ(f.metadata().at("k"), "v");
  std::vector<float> a2(6), b2(1);
  f.read("a", {2, 3}, a2.data());
  f.read("b", {1}, b2.data());
  EXPECT_EQ(a, a2);
  EXPECT_EQ(b, b2);
  EXPECT_THROW(f.read("a", {3, 2}, a2.data()), Error);  // wrong shape
  EXPECT_THROW(f.read("c", {1}, b2.data()), Error);     // missing
  std::remove(p.c_str());
}

TEST(Safetensors, TruncatedAndLyingFilesGiveClearErrors) {
  std::vector<float> a(100, 1.0f);
  const std::string p = temp_path("bad.safetensors");
  write_safetensors(p, {{"w", {10, 10}, a.data()}}, {});
  auto bytes = read_all(p);
  auto expect_error = [&](const std::vector<char>& b, const std::string& what) {
    write_all(p, b);
    try {
      SafetensorsFile f(p);
      FAIL() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  expect_error(std::vector<char>(bytes.begin(), bytes.end() - 8), "truncated data");
  expect_error(std::vector<char>(bytes.begin(), bytes.begin() + 5), "truncated length");
  auto lying = bytes;
  uint64_t huge = 1ull << 40;
  std::memcpy(lying.data(), &huge, 8);
  expect_error(lying, "header length");
  std::string text(bytes.begin() + 8, bytes.end());
  auto pos = text.find("400");
  ASSERT_NE(pos, std::string::npos);
  auto offsets = bytes;
  offsets[8 + pos] = '9';  // data_offsets end 900: past the file
  expect_error(offsets, "offsets");
  std::remove(p.c_str());
}

TEST(Safetensors, FuzzedHeadersNeverCrash) {
  std::vector<float> a(12, 2.0f);
  const std::string p = temp_path("fuzz.safetensors");
  write_safetensors(p, {{"x", {3, 4}, a.data()}, {"y", {2}, a.data()}}, {{"m", "n"}});
  const auto good = read_all(p);
  Rng rng(7, "fuzz");
  int errors = 0;
  for (int trial = 0; trial < 300; ++trial) {
    auto b = good;
    int flips = 1 + static_cast<int>(rng.below(4));
    for (int i = 0; i < flips; ++i) {
      size_t at = rng.below(std::min<size_t>(b.size(), 160));
      b[at] = static_cast<char>(rng.below(256));
    }
    if (rng.below(4) == 0) b.resize(rng.below(b.size()));
    write_all(p, b);
    try {
      SafetensorsFile f(p);
      std::vector<float> out(12);
      if (f.contains("x")) try { f.read("x", {3, 4}, out.data()); } catch (const Error&) { ++errors; }
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
  std::remove(p.c_str());
}

}  // namespace
}  // namespace ff

namespace ff {
namespace {

// A full disk (/dev/full: every write fails with ENOSPC) ends the run with an error naming the
// file and the reason, after retrying; it is never ignored (issue: metrics.jsonl kept 1 of 2,000
// records, rc 0).
TEST(AppendFile, AFullDiskIsAnErrorNamingTheFile) {
  AppendFile full("/dev/full", /*truncate=*/false);
  try {
    full.write_line("{\"step\": 1}");
    ADD_FAILURE() << "a write to /dev/full succeeded";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("/dev/full"), std::string::npos) << msg;
    EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  }
}

TEST(AppendFile, AppendsCompleteLines) {
  const std::string p = temp_path("append.jsonl");
  std::ofstream(p) << "{\"step\": 1}\n";
  {
    AppendFile f(p, false);
    f.write_line("{\"step\": 2}");
    f.write_line("{\"step\": 3}");
  }
  std::ifstream in(p);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(all, "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3}\n");
  AppendFile fresh(p, true);
  fresh.write_line("x");
  std::ifstream again(p);
  std::string now((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>());
  EXPECT_EQ(now, "x\n");
}

}  // namespace
}  // namespace ff
