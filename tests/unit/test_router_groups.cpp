// Group-limited routing and the per-group (sequence) load-balancing loss at kernel level
// (kernels/cpu/router.h, kernels/cpu/aux_loss.h): hand-worked selections, a brute-force
// reference on random rows for every score path, the gradient through a group-limited selection,
// and the sequence loss against its formula and finite differences.
#include <algorithm>
#include <numeric>
#include <set>

#include "core/check.h"
#include "kernels/cpu/aux_loss.h"
#include "kernels/cpu/router.h"
#include "test_util.h"

namespace ff::cpu {
namespace {

using ff::test::all_close;
using ff::test::finite_difference;
using ff::test::randn;

RouterOptions grouped(int64_t E, int64_t K, int64_t G, int64_t M, RouterScore score = RouterScore::softmax,
                      bool pre = false) {
  RouterOptions o;
  o.num_experts = E;
  o.top_k = K;
  o.score = score;
  o.pre_softmax = pre;
  o.num_groups = G;
  o.group_topk = M;
  return o;
}

struct Routed {
  std::vector<int32_t> idx;
  std::vector<float> probs, scores;
};

Routed route(const std::vector<float>& logits, const float* bias, int64_t N, const RouterOptions& o) {
  Routed r{std::vector<int32_t>(static_cast<size_t>(N * o.top_k)), std::vector<float>(static_cast<size_t>(N * o.top_k)),
           std::vector<float>(static_cast<size_t>(N * o.num_experts))};
  router_topk_forward(r.idx.data(), r.probs.data(), r.scores.data(), logits.data(), bias, N, o);
  return r;
}

// Plain softmax routing selects on the logits themselves, so the example's numbers are the
// selection values. E = 12 in G = 3 groups (g0: e0-e3, g1: e4-e7, g2: e8-e11), K = 4, M = 2:
// each group is scored by the sum of its top K / M = 2 values.
TEST(GroupLimitedRouting, HandWorkedExample) {
  const std::vector<float> logits = {
      // row 0: g0 = 5 + 0, g1 = 3 + 3, g2 = 4 + 1; {g1, g0} (g0 and g2 tie at 5: the lower group).
      // Among e0-e7: e0 (5), e4 (3), e5 (3), then e1 (0, the lowest of the zeros). Without groups
      // e8 (4) would be second.
      5, 0, 0, 0, 3, 3, 0, 0, 4, 1, 0, 0,
      // row 1: g0 = 1 + 1, g1 = 9 + 0, g2 = 2 + 2; {g1, g2}: e7, e8, e9, e4. Without groups the
      // 4th would be e0 (1).
      1, 1, 1, 1, 0, 0, 0, 9, 2, 2, 0, 0,
      // row 2: by sums g0 = 7, g1 = 4 + 4 = 8, g2 = 5: {g1, g0}; by the largest value alone it
      // would be {g0 (7), g2 (5)}. e0, e4, e5, e1.
      7, 0, 0, 0, 4, 4, 0, 0, 5, 0, 0, 0};
  Routed r = route(logits, nullptr, 3, grouped(12, 4, 3, 2));
  EXPECT_EQ(r.idx, (std::vector<int32_t>{0, 4, 5, 1, /**/ 7, 8, 9, 4, /**/ 0, 4, 5, 1}));
  // The probs are the softmax over the selected logits: row 0 over {5, 3, 3, 0}.
  const double z = std::exp(5.0) + 2 * std::exp(3.0) + 1.0;
  EXPECT_NEAR(r.probs[0], std::exp(5.0) / z, 1e-6);
  EXPECT_NEAR(r.probs[1], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(r.probs[3], 1.0 / z, 1e-6);
  // The same rows without groups.
  RouterOptions flat = grouped(12, 4, 0, 0);
  Routed f = route(logits, nullptr, 3, flat);
  EXPECT_EQ(f.idx, (std::vector<int32_t>{0, 8, 4, 5, /**/ 7, 8, 9, 0, /**/ 0, 8, 4, 5}));
}

// Sigmoid scores with the expert bias: the bias chooses the group (selection only), the probs
// stay the unbiased sigmoids, renormalised and scaled. E = 4 in 2 groups, K = 2, M = 1.
TEST(GroupLimitedRouting, BiasMovesTheGroupNotTheProbs) {
  RouterOptions o = grouped(4, 2, 2, 1, RouterScore::sigmoid);
  o.norm_topk_prob = true;
  o.topk_scaling_factor = 2.5f;
  const std::vector<float> logits = {0, 0, 0, 0};  // every score 0.5
  const std::vector<float> bias = {0, 0, 0.1f, 0};  // g0 = 0.5 + 0.5, g1 = 0.6 + 0.5
  Routed r = route(logits, bias.data(), 1, o);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{2, 3}));
  EXPECT_FLOAT_EQ(r.probs[0], 2.5f * 0.5f);  // 0.5 / (0.5 + 0.5), times 2.5
  EXPECT_FLOAT_EQ(r.probs[1], 2.5f * 0.5f);
  Routed unbiased = route(logits, nullptr, 1, o);
  EXPECT_EQ(unbiased.idx, (std::vector<int32_t>{0, 1}));  // all tie: the lower group, then the lower ids
}

// Brute force in double: group scores, the M best groups, the K best experts of theirs.
std::vector<int32_t> reference_grouped(const float* v, const RouterOptions& o) {
  const int64_t E = o.num_experts, G = o.num_groups, M = o.group_topk, K = o.top_k, per = E / G, m = K / M;
  std::vector<double> score(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    std::vector<double> w(v + g * per, v + (g + 1) * per);
    std::sort(w.begin(), w.end(), std::greater<>());
    score[g] = std::accumulate(w.begin(), w.begin() + m, 0.0);
  }
  std::vector<int32_t> groups(static_cast<size_t>(G));
  std::iota(groups.begin(), groups.end(), 0);
  std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return score[a] > score[b]; });
  std::vector<int32_t> cand;
  for (int64_t e = 0; e < E; ++e)
    if (std::find(groups.begin(), groups.begin() + M, e / per) != groups.begin() + M) cand.push_back(int32_t(e));
  std::stable_sort(cand.begin(), cand.end(), [&](int a, int b) { return v[a] > v[b]; });
  cand.resize(static_cast<size_t>(K));
  return cand;
}

TEST(GroupLimitedRouting, MatchesBruteForceAndStaysInItsGroups) {
  struct Case {
    int64_t E, K, G, M;
  };
  for (const Case& c : {Case{8, 2, 4, 1}, Case{8, 4, 4, 2}, Case{12, 3, 3, 2}, Case{16, 8, 8, 4}, Case{6, 6, 3, 3}})
    for (int path = 0; path < 3; ++path) {
      const RouterScore score = path == 2 ? RouterScore::sigmoid : RouterScore::softmax;
      RouterOptions o = grouped(c.E, c.K, c.G, c.M, score, path == 1);
      const int64_t N = 40;
      auto logits = randn(static_cast<size_t>(N * c.E), 7 + c.E + path, 1.5f);
      auto bias = randn(static_cast<size_t>(c.E), 9, 0.2f);
      const float* b = score == RouterScore::sigmoid ? bias.data() : nullptr;
      Routed r = route(logits, b, N, o);
      for (int64_t n = 0; n < N; ++n) {
        // the selection values: logits (plain softmax), softmax scores (pre-softmax), sigmoid + bias
        std::vector<float> v(logits.begin() + n * c.E, logits.begin() + (n + 1) * c.E);
        if (path > 0)
          for (int64_t e = 0; e < c.E; ++e) v[e] = r.scores[n * c.E + e] + (b ? b[e] : 0.0f);
        std::vector<int32_t> got(r.idx.begin() + n * c.K, r.idx.begin() + (n + 1) * c.K);
        EXPECT_EQ(got, reference_grouped(v.data(), o)) << "E " << c.E << " path " << path << " row " << n;
        std::set<int32_t> groups;
        for (int32_t e : got) groups.insert(e / int32_t(c.E / c.G));
        EXPECT_LE(int64_t(groups.size()), c.M);
      }
    }
}

// The gradient through a group-limited selection is the gating function's, selection fixed:
// central differences of <w, topk_probs>. The logits are 0.08 x a Sidon set (every sum of two is
// distinct: the Mian-Chowla sequence), permuted per row, so no two experts and no two group
// scores lie within a finite-difference step of each other (checked: `flipped`).
// h = 1e-2 leaves an O(h^2) truncation error of a few 1e-4 relative on these O(1) second
// derivatives, and fp32 rounding of L/h ~ 1e-7/1e-2 = 1e-5 absolute: hence 2e-4 + 2e-2 relative.
TEST(GroupLimitedRouting, BackwardMatchesFiniteDifferences) {
  for (int path = 0; path < 3; ++path) {
    RouterOptions o = grouped(8, 4, 4, 2, path == 2 ? RouterScore::sigmoid : RouterScore::softmax, path == 1);
    o.norm_topk_prob = path > 0;
    const int64_t N = 5, E = 8, K = 4;
    const float sidon[8] = {0, 1, 3, 7, 12, 20, 30, 44};
    std::vector<float> logits(static_cast<size_t>(N * E));
    auto noise = randn(logits.size(), 31 + path, 0.005f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < E; ++e) logits[n * E + e] = 0.08f * sidon[(e * 5 + n * 3) % E] - 1.5f + noise[n * E + e];
    auto w = randn(static_cast<size_t>(N * K), 40 + path);
    Routed f = route(logits, nullptr, N, o);
    std::vector<float> dl(static_cast<size_t>(N * E));
    router_topk_backward(dl.data(), w.data(), f.idx.data(), f.probs.data(), f.scores.data(), logits.data(), N, o);
    bool flipped = false;
    auto L = [&]() {
      Routed g = route(logits, nullptr, N, o);
      flipped |= g.idx != f.idx;
      double s = 0;
      for (size_t i = 0; i < w.size(); ++i) s += double(w[i]) * g.probs[i];
      return s;
    };
    std::vector<float> fd(dl.size());
    for (size_t i = 0; i < fd.size(); ++i) fd[i] = float(finite_difference(L, logits[i], 1e-2f));
    ASSERT_FALSE(flipped) << "path " << path;
    EXPECT_TRUE(all_close(dl, fd, 2e-4, 2e-2)) << "path " << path;
  }
}

TEST(GroupLimitedRouting, BadGroupOptionsThrow) {
  std::vector<float> logits(8, 0.0f);
  auto fwd = [&](RouterOptions o) { route(logits, nullptr, 1, o); };
  EXPECT_THROW(fwd(grouped(8, 2, 3, 1)), ff::Error);  // 3 groups do not divide 8 experts
  EXPECT_THROW(fwd(grouped(8, 2, 4, 5)), ff::Error);  // more groups per token than groups
  EXPECT_THROW(fwd(grouped(8, 3, 4, 1)), ff::Error);  // K = 3 > the chosen group's 2 experts
  EXPECT_THROW(fwd(grouped(8, 2, 4, 3)), ff::Error);  // M = 3 > K: a group scored by no value
  EXPECT_THROW(fwd(grouped(8, 2, 0, 1)), ff::Error);  // group_topk without groups
  EXPECT_NO_THROW(fwd(grouped(8, 2, 4, 2)));
}

// ---- the sequence loss: one balancing group per sequence -------------------------------------

// Rows of B = 3 sequences of S = 5, of which this "rank" holds rows 4 .. 12 (first_row 4, as a
// sequence-parallel share): L = sum_b c_b sum_e counts[b, e] sum_{n of b} s[n, e] with the scale
// of the sequence loss, alpha / B * E / (K S^2).
TEST(SequenceAuxLoss, GroupsFollowTheRowsSequences) {
  const int64_t E = 5, K = 2, B = 3, S = 5, N = 9, first = 4;
  const BalanceGroups g{B, S, first};
  EXPECT_EQ(g.of(0), 0);  // stream row 4: sequence 0
  EXPECT_EQ(g.of(1), 1);  // stream row 5: sequence 1
  EXPECT_EQ(g.of(8), 2);  // stream row 12: sequence 2
  for (RouterScore sc : {RouterScore::softmax, RouterScore::sigmoid}) {
    RouterOptions o;
    o.num_experts = E;
    o.top_k = K;
    o.score = sc;
    auto logits = randn(static_cast<size_t>(N * E), 90, 1.5f);
    std::vector<float> s(static_cast<size_t>(N * E));
    std::vector<int64_t> counts(static_cast<size_t>(B * E), 0);
    aux_loss_scores(s.data(), counts.data(), logits.data(), N, g, o);
    // Counts per sequence: row n counts towards sequence (4 + n) / 5, each row K times.
    int64_t per_seq[3] = {0, 0, 0};
    for (int64_t b = 0; b < B; ++b)
      for (int64_t e = 0; e < E; ++e) per_seq[b] += counts[b * E + e];
    EXPECT_EQ(per_seq[0], 1 * K);
    EXPECT_EQ(per_seq[1], 5 * K);
    EXPECT_EQ(per_seq[2], 3 * K);
    const double alpha = 0.1, scale = switch_loss_scale(alpha, E, K, S) / double(B);
    double want = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < E; ++e) want += scale * double(counts[g.of(n) * E + e]) * s[n * E + e];
    // a double sum of 45 fp32 products: agreement to 1e-12 relative
    EXPECT_NEAR(aux_loss_value(s.data(), counts.data(), N, g, scale, o), want, 1e-12 * want);

    // Backward, counts fixed, against central differences (tolerances as for the routing FD above).
    auto L = [&]() {
      std::vector<float> s2(s.size());
      std::vector<int64_t> dummy(counts.size(), 0);
      aux_loss_scores(s2.data(), dummy.data(), logits.data(), N, g, o);
      return 3.0 * aux_loss_value(s2.data(), counts.data(), N, g, scale, o);
    };
    std::vector<float> fd(logits.size()), dl(logits.size(), 0.0f);
    for (size_t i = 0; i < fd.size(); ++i) fd[i] = float(finite_difference(L, logits[i], 1e-2f));
    aux_loss_backward(dl.data(), s.data(), counts.data(), logits.data(), N, g, scale, 3.0f, o);
    EXPECT_TRUE(all_close(dl, fd, 2e-6, 2e-2));
    double norm = 0;
    for (float v : fd) norm += double(v) * v;
    EXPECT_GT(norm, 1e-8);
  }
}

}  // namespace
}  // namespace ff::cpu
