// GPT samples: over the epochs every token of a split is an input exactly once per epoch, no sample
// reaches outside its split, the same seed gives the same order (from the cache too), blends honour
// their weights, and tokens beyond the vocabulary or too-small splits give clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/check.h"
#include "core/rng.h"
#include "io/gpt_dataset.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("fivefold_gpt_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// `docs` documents of 0..max_len tokens (some documents of two sequences); token value = its
// position in the file plus `base`, so every token is identifiable. Returns the prefix.
std::string unique_token_dataset(const std::string& dir, const std::string& name, int docs, int max_len,
                                 int32_t base = 0, uint64_t seed = 1) {
  IndexedDatasetWriter w(dir + "/" + name, TokenDType::i32);
  Rng rng(seed, "docs");
  int32_t next = base;
  for (int d = 0; d < docs; ++d) {
    const int nseq = rng.below(4) == 0 ? 2 : 1;
    for (int s = 0; s < nseq; ++s) {
      std::vector<int32_t> t(rng.below(static_cast<uint64_t>(max_len) + 1));
      for (auto& x : t) x = next++;
      w.add_sequence(t);
    }
    w.end_document();
  }
  w.finish();
  return dir + "/" + name;
}

std::vector<int32_t> split_tokens(const IndexedDataset& ds, DocRange r) {
  std::vector<int32_t> out;
  for (int64_t s = ds.document_index(r.begin); s < ds.document_index(r.end); ++s) {
    auto q = ds.sequence(s);
    out.insert(out.end(), q.begin(), q.end());
  }
  return out;
}

GptDatasetOptions options(int64_t L, int64_t n, DocRange r, const std::string& split, uint64_t seed = 7) {
  GptDatasetOptions o;
  o.seq_len = L;
  o.num_samples = n;
  o.documents = r;
  o.split_name = split;
  o.seed = seed;
  o.vocab_size = 1 << 30;
  return o;
}

TEST(GptDataset, SplitDocumentsByRatio) {
  auto s = split_documents("98,2,0", 100, "train.split");
  EXPECT_EQ(s[0].begin, 0); EXPECT_EQ(s[0].end, 98);
  EXPECT_EQ(s[1].begin, 98); EXPECT_EQ(s[1].end, 100);
  EXPECT_EQ(s[2].begin, 100); EXPECT_EQ(s[2].end, 100);
  s = split_documents("1", 7, "x");
  EXPECT_EQ(s[0].end, 7);
  EXPECT_EQ(s[1].begin, 7);
  s = split_documents("0.8,0.1,0.1", 10, "x");
  EXPECT_EQ(s[0].end, 8); EXPECT_EQ(s[1].end, 9); EXPECT_EQ(s[2].end, 10);
  for (const char* bad : {"a,b", "-1,2", "0,0,0", "1,2,3,4", "", "1,,2x"}) {
    try {
      split_documents(bad, 10, "train.split");
      ADD_FAILURE() << "no error for '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("train.split"), std::string::npos) << e.what();
    }
  }
}

TEST(GptDataset, EveryTokenOncePerEpochAndNoSampleCrossesTheSplit) {
  const std::string dir = temp_dir("epochs");
  auto ds = std::make_shared<const IndexedDataset>(unique_token_dataset(dir, "d", 60, 30));
  const auto splits = split_documents("80,20,0", ds->num_documents(), "split");
  const int64_t L = 7;
  for (int which = 0; which < 2; ++which) {
    const DocRange r = splits[static_cast<size_t>(which)];
    const auto mine = split_tokens(*ds, r);
    const auto T = static_cast<int64_t>(mine.size());
    std::set<int32_t> in_split(mine.begin(), mine.end());
    GptDataset g(ds, options(L, 3 * T / L, r, which == 0 ? "train" : "valid"));
    ASSERT_GE(g.epochs(), 3);
    EXPECT_EQ(g.tokens_per_epoch(), T);
    std::map<int32_t, int64_t> count;
    std::vector<int32_t> sample(static_cast<size_t>(L + 1));
    for (int64_t e = 0; e + 1 < g.epochs(); ++e) {
      for (int64_t i = g.epoch_begin(e); i < g.epoch_begin(e + 1); ++i) {
        g.get(i, sample.data());
        for (int64_t k = 0; k <= L; ++k) ASSERT_TRUE(in_split.count(sample[static_cast<size_t>(k)])) << "sample " << i;
        for (int64_t k = 0; k < L; ++k) ++count[sample[static_cast<size_t>(k)]];
      }
      // After epochs 0..e every token was an input e + 1 times; the last sample may run a few
      // tokens (< L) into the next epoch.
      int64_t extra = 0;
      for (int32_t t : mine) {
        ASSERT_GE(count[t], e + 1) << "token " << t << " after epoch " << e;
        extra += count[t] - (e + 1);
      }
      EXPECT_LT(extra, L);
    }
  }
  fs::remove_all(dir);
}

TEST(GptDataset, SameSeedSameOrderThroughTheCache) {
  const std::string dir = temp_dir("cache");
  auto ds = std::make_shared<const IndexedDataset>(unique_token_dataset(dir, "d", 50, 20));
  const DocRange all{0, ds->num_documents()};
  auto samples = [&](const GptDataset& g) {
    std::vector<int32_t> out(static_cast<size_t>(g.size() * 6));
    for (int64_t i = 0; i < g.size(); ++i) g.get(i, out.data() + i * 6);
    return out;
  };
  GptDataset a(ds, options(5, 300, all, "train"));
  EXPECT_FALSE(a.loaded_from_cache());
  EXPECT_TRUE(fs::exists(a.cache_prefix() + "-shuffle_index.npy"));
  EXPECT_EQ(fs::path(a.cache_prefix()).parent_path(), fs::path(dir) / "cache");
  GptDataset b(ds, options(5, 300, all, "train"));
  EXPECT_TRUE(b.loaded_from_cache());
  EXPECT_EQ(samples(a), samples(b));
  auto o = options(5, 300, all, "train");
  o.use_cache = false;
  EXPECT_EQ(samples(GptDataset(ds, o)), samples(a));
  // A different seed is a different cache entry and a different order.
  GptDataset c(ds, options(5, 300, all, "train", 8));
  EXPECT_FALSE(c.loaded_from_cache());
  EXPECT_NE(c.cache_prefix(), a.cache_prefix());
  EXPECT_NE(samples(c), samples(a));
  // A damaged cache file is rebuilt, not trusted.
  std::ofstream(a.cache_prefix() + "-sample_index.npy", std::ios::trunc) << "junk";
  GptDataset d(ds, options(5, 300, all, "train"));
  EXPECT_FALSE(d.loaded_from_cache());
  EXPECT_EQ(samples(d), samples(a));
  fs::remove_all(dir);
}

TEST(GptDataset, BlendHonoursWeights) {
  const std::string dir = temp_dir("blend");
  const std::vector<double> w = {5, 3, 2};
  const int64_t N = 6000, L = 4;
  const auto need = BlendedDataset::samples_needed(w, N);
  std::vector<std::unique_ptr<GptDataset>> parts;
  for (int d = 0; d < 3; ++d) {
    // Dataset d's tokens are d * 10^6 + position, so each sample says where it came from.
    auto ds = std::make_shared<const IndexedDataset>(unique_token_dataset(dir, "p" + std::to_string(d), 30, 40, d * 1000000));
    parts.push_back(std::make_unique<GptDataset>(ds, options(L, need[static_cast<size_t>(d)], {0, ds->num_documents()}, "train")));
  }
  BlendedDataset blend(std::move(parts), w, N);
  std::vector<int64_t> seen(3, 0);
  std::vector<int32_t> s(L + 1);
  for (int64_t i = 0; i < N; ++i) {
    blend.get(i, s.data());
    const int d = s[0] / 1000000;
    ASSERT_EQ(d, blend.dataset_of(i));
    ++seen[static_cast<size_t>(d)];
    // Every prefix of the blend is within one sample of its share.
    for (int k = 0; k < 3; ++k)
      ASSERT_LE(std::abs(static_cast<double>(seen[static_cast<size_t>(k)]) - w[static_cast<size_t>(k)] / 10.0 * (i + 1)), 1.0);
  }
  EXPECT_EQ(seen[0], 3000);
  EXPECT_EQ(seen[1], 1800);
  EXPECT_EQ(seen[2], 1200);
  EXPECT_THROW(BlendedDataset::samples_needed({1, -1}, 10), Error);
  fs::remove_all(dir);
}

TEST(GptDataset, TokensBeyondVocabularyAndTinySplitsAreErrors) {
  const std::string dir = temp_dir("errors");
  auto ds = std::make_shared<const IndexedDataset>(unique_token_dataset(dir, "d", 20, 20, 4000));
  auto o = options(8, 10, {0, ds->num_documents()}, "train");
  o.vocab_size = 4096;
  GptDataset g(ds, o);
  std::vector<int32_t> s(9);
  bool failed = false;
  for (int64_t i = 0; i < g.size() && !failed; ++i) {
    try {
      g.get(i, s.data());
    } catch (const Error& e) {
      failed = true;
      EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("d.bin"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(failed);
  try {
    GptDataset tiny(ds, options(10000, 1, {0, 1}, "valid"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("valid split"), std::string::npos) << e.what();
  }
  EXPECT_THROW(GptDataset(ds, options(8, 1, {5, 3}, "train")), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ff
