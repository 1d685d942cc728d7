// Structured pruning (Minitron; specs/methods.md §3.5-3.6, tests of §3.10): the importance
// statistic against a hand computation, and the keep sets: keeping everything is the identity,
// the lowest-scoring head goes first, group-aware Mamba pruning keeps equal heads per group.
#include <gtest/gtest.h>

#include <cmath>

#include "layers/importance.h"
#include "recipes/prune/keep.h"

namespace ff {
namespace {

// §3.10 (vi): a [S=2, B=3, F=4] tensor, acc[f] = sum_b (mean_s |a[s, b, f]|)^2, worked by hand for
// channel 0 and checked against ImportanceStats for all.
TEST(Importance, StatisticMatchesAHandComputedValue) {
  const int64_t B = 3, S = 2, F = 4;
  std::vector<float> a(static_cast<size_t>(B * S * F));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t f = 0; f < F; ++f)
        a[static_cast<size_t>((b * S + s) * F + f)] = static_cast<float>((f + 1) * (s == 0 ? 1 : -3) + b);
  // channel 0: b = 0: |1|, |-3| -> mean 2; b = 1: |2|, |-2| -> 2; b = 2: |3|, |-1| -> 2: acc = 12.
  const auto want = importance_of_batch(a, B, S, F);
  EXPECT_DOUBLE_EQ(want[0], 12.0);
  ImportanceStats st;
  st.declare("x", F);
  Tensor t;
  t.ptr = a.data();
  t.shape = Shape{B * S, F};
  ImportanceRows rows{B, S, S, 0, B * S, {}};
  st.add("x", 0, F, t, F, a.data(), rows, true);
  for (int64_t f = 0; f < F; ++f) EXPECT_DOUBLE_EQ(st.raw().at("x")[static_cast<size_t>(f)], want[static_cast<size_t>(f)]);
  EXPECT_DOUBLE_EQ(st.scores("x")[0], std::sqrt(12.0));
  // Rows split in two halves (as two SP ranks would hold them) add up to the same statistic only
  // after the partial sums are combined; here one rank adds both halves' columns as a check of the
  // row bookkeeping: channels [0, 2) from rows 0..2, as an uncounted replica adds nothing.
  st.add("x", 0, 2, t, F, a.data(), rows, false);
  EXPECT_DOUBLE_EQ(st.raw().at("x")[0], want[0]);
}

TEST(PruneKeep, KeepingEverythingIsTheIdentity) {
  const std::vector<double> s = {0.3, 0.1, 0.9, 0.2, 0.5, 0.4};
  EXPECT_EQ(top_k_indices(s, 6), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  const MambaKeep k = mamba_keep_group_aware(s, 3, 2, 1, 3, 2);
  EXPECT_EQ(k.heads, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(k.channels, (std::vector<int64_t>{0, 1}));
}

// §3.10 (ii), (iii): a head with zero scores (its x rows zeroed) goes first; group-aware pruning
// keeps H' / G heads in every group, the same P' channels in every head.
TEST(PruneKeep, GroupAwareMambaKeepsEqualHeadsPerGroup) {
  const int64_t H = 8, P = 4, G = 2;
  std::vector<double> s(static_cast<size_t>(H * P));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t p = 0; p < P; ++p) s[static_cast<size_t>(h * P + p)] = 1.0 + 0.1 * h + (p == 2 ? 5.0 : 0.0) - 0.01 * p;
  for (int64_t p = 0; p < P; ++p) s[static_cast<size_t>(5 * P + p)] = 0;  // head 5 (group 1) zeroed
  const MambaKeep aware = mamba_keep_group_aware(s, H, P, G, 6, 2);
  EXPECT_EQ(aware.channels, (std::vector<int64_t>{0, 2}));  // channel 2 strongest, then channel 0
  EXPECT_EQ(aware.heads, (std::vector<int64_t>{1, 2, 3, 4, 6, 7}));  // 3 per group; 0 and 5 dropped
  // Group-unaware: the global top 6 (heads 2, 3, 4, 1, 6, 7 by score, zeroed 5 and weakest 0 out)
  // happen to be the same set here; make group 1 strong to see the difference.
  for (int64_t p = 0; p < P; ++p)
    for (int64_t h = 4; h < 8; ++h)
      if (h != 5) s[static_cast<size_t>(h * P + p)] += 10;
  const MambaKeep unaware = mamba_keep_group_unaware(s, H, P, G, 4, 2);
  EXPECT_EQ(unaware.heads, (std::vector<int64_t>{3, 4, 6, 7}));  // 1 from group 0, 3 from group 1
  const MambaKeep aware4 = mamba_keep_group_aware(s, H, P, G, 4, 2);
  EXPECT_EQ(aware4.heads, (std::vector<int64_t>{2, 3, 6, 7}));  // 2 per group
  EXPECT_THROW(mamba_keep_group_aware(s, H, P, G, 5, 2), Error);  // 5 heads do not split over 2 groups
}

TEST(PruneKeep, AttentionHeadsRankWithinTheirQueryGroup) {
  // 4 query heads of dh 2 in 2 query groups; keep 1 per group.
  const std::vector<double> s = {1, 1, 3, 3, 5, 5, 2, 2};
  EXPECT_EQ(attention_heads_keep(s, 4, 2, 2, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_THROW(attention_heads_keep(s, 4, 2, 2, 3), Error);
}

}  // namespace
}  // namespace ff
