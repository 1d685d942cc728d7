// Router kernels (specs/parallelism-and-moe.md §6): forward against a double-precision scalar
// reference for every gating path, backward against central finite differences, aux loss and
// z-loss values against their formulas, and the accumulate / overwrite contracts.
#include <algorithm>
#include <numeric>
#include <set>

#include "core/check.h"
#include "core/rng.h"
#include "kernels/cpu/aux_loss.h"
#include "kernels/cpu/router.h"
#include "test_util.h"

namespace ff::cpu {
namespace {

using ff::test::all_close;
using ff::test::dot;
using ff::test::finite_difference;
using ff::test::randn;

RouterOptions make_opt(int64_t E, int64_t K, RouterScore score, bool pre = false,
                       bool norm = false, float factor = 1.0f) {
  RouterOptions o;
  o.num_experts = E;
  o.top_k = K;
  o.score = score;
  o.pre_softmax = pre;
  o.norm_topk_prob = norm;
  o.topk_scaling_factor = factor;
  return o;
}

// Logits whose values within a row are a shuffled ladder with step `gap` (plus a little noise),
// so finite-difference steps never reorder the top-k.
std::vector<float> gapped_logits(int64_t N, int64_t E, uint64_t seed, float gap = 0.6f) {
  Rng rng(seed, "gapped");
  std::vector<float> l(static_cast<size_t>(N * E));
  std::vector<int> perm(static_cast<size_t>(E));
  for (int64_t n = 0; n < N; ++n) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = E - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(uint64_t(i + 1))]);
    for (int64_t e = 0; e < E; ++e)
      l[n * E + e] = gap * (float(perm[e]) - 0.5f * float(E)) + 0.05f * rng.normal();
  }
  return l;
}

struct Routed {
  std::vector<int32_t> idx;
  std::vector<double> probs;
};

// Scalar reference in double: selection scores, a stable sort (ties to the lower id), gating.
Routed reference_route(const std::vector<float>& logits, const float* bias, int64_t N,
                       const RouterOptions& o) {
  const int64_t E = o.num_experts, K = o.top_k;
  Routed r{std::vector<int32_t>(static_cast<size_t>(N * K)), std::vector<double>(static_cast<size_t>(N * K))};
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits.data() + n * E;
    std::vector<double> s(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
    if (o.score == RouterScore::softmax) {
      double m = *std::max_element(l, l + E), z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(l[e] - m);
      for (int64_t e = 0; e < E; ++e) s[e] = std::exp(l[e] - m) / z;
    } else {
      for (int64_t e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-double(l[e])));
    }
    for (int64_t e = 0; e < E; ++e) {
      const bool plain = o.score == RouterScore::softmax && !o.pre_softmax;
      sel[e] = plain ? l[e] : s[e] + (bias ? bias[e] : 0.0);
    }
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sel[a] > sel[b]; });
    std::vector<double> q(static_cast<size_t>(K));
    if (o.score == RouterScore::softmax && !o.pre_softmax) {
      double z = 0;
      for (int64_t j = 0; j < K; ++j) z += std::exp(double(l[order[j]]));
      for (int64_t j = 0; j < K; ++j) q[j] = std::exp(double(l[order[j]])) / z;
    } else {
      double S = 0;
      for (int64_t j = 0; j < K; ++j) S += s[order[j]];
      for (int64_t j = 0; j < K; ++j) q[j] = s[order[j]] / (o.norm_topk_prob ? S + 1e-20 : 1.0);
    }
    for (int64_t j = 0; j < K; ++j) {
      r.idx[n * K + j] = order[j];
      r.probs[n * K + j] = q[j] * o.topk_scaling_factor;
    }
  }
  return r;
}

struct Out {
  std::vector<int32_t> idx;
  std::vector<float> probs, scores;
};

Out route(const std::vector<float>& logits, const float* bias, int64_t N, const RouterOptions& o) {
  Out out{std::vector<int32_t>(static_cast<size_t>(N * o.top_k)), std::vector<float>(static_cast<size_t>(N * o.top_k)),
          std::vector<float>(static_cast<size_t>(N * o.num_experts))};
  router_topk_forward(out.idx.data(), out.probs.data(), out.scores.data(), logits.data(), bias, N,
                      o);
  return out;
}

void expect_matches_reference(const std::vector<float>& logits, const float* bias, int64_t N,
                              const RouterOptions& o) {
  Out got = route(logits, bias, N, o);
  Routed want = reference_route(logits, bias, N, o);
  EXPECT_EQ(got.idx, want.idx);
  std::vector<float> wantf(want.probs.begin(), want.probs.end());
  EXPECT_TRUE(all_close(got.probs, wantf, 1e-6, 1e-5));
  // exactly K distinct, in-range experts per row
  for (int64_t n = 0; n < N; ++n) {
    std::set<int32_t> ids(got.idx.begin() + n * o.top_k, got.idx.begin() + (n + 1) * o.top_k);
    EXPECT_EQ(int64_t(ids.size()), o.top_k);
    EXPECT_GE(*ids.begin(), 0);
    EXPECT_LT(*ids.rbegin(), o.num_experts);
  }
}

TEST(RouterForward, PlainSoftmaxMatchesReference) {
  const int64_t N = 37, E = 8;
  auto logits = randn(static_cast<size_t>(N * E), 1, 2.0f);
  for (int64_t K : {1, 2, 3, 8}) expect_matches_reference(logits, nullptr, N, make_opt(E, K, RouterScore::softmax));
  // k = E: softmax over all experts, sorted descending; rows sum to 1
  Out all = route(logits, nullptr, N, make_opt(E, E, RouterScore::softmax));
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t j = 0; j < E; ++j) s += all.probs[n * E + j];
    EXPECT_NEAR(s, 1.0, 1e-6);
    for (int64_t j = 1; j < E; ++j) EXPECT_GE(all.probs[n * E + j - 1], all.probs[n * E + j]);
  }
  // k = 1: the single prob is 1
  Out one = route(logits, nullptr, N, make_opt(E, 1, RouterScore::softmax));
  for (float p : one.probs) EXPECT_EQ(p, 1.0f);
}

TEST(RouterForward, PreSoftmaxWithAndWithoutNorm) {
  const int64_t N = 29, E = 6;
  auto logits = randn(static_cast<size_t>(N * E), 2, 1.5f);
  for (int64_t K : {1, 2, 4, 6})
    for (bool norm : {false, true})
      expect_matches_reference(logits, nullptr, N, make_opt(E, K, RouterScore::softmax, true, norm));
  // without norm the probs are the selected full softmax scores (sum < 1 for K < E)
  Out o = route(logits, nullptr, N, make_opt(E, 2, RouterScore::softmax, true, false));
  for (int64_t n = 0; n < N; ++n) {
    EXPECT_EQ(o.probs[n * 2], o.scores[n * E + o.idx[n * 2]]);
    EXPECT_LT(o.probs[n * 2] + o.probs[n * 2 + 1], 1.0f);
  }
  // with norm they sum to 1
  Out on = route(logits, nullptr, N, make_opt(E, 2, RouterScore::softmax, true, true));
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(on.probs[n * 2] + on.probs[n * 2 + 1], 1.0, 1e-6);
}

TEST(RouterForward, SigmoidBiasChangesSelectionNotProbs) {
  const int64_t N = 24, E = 8, K = 2;
  auto logits = randn(static_cast<size_t>(N * E), 3, 1.5f);
  for (bool norm : {false, true}) {
    RouterOptions o = make_opt(E, K, RouterScore::sigmoid, false, norm);
    expect_matches_reference(logits, nullptr, N, o);
    // bias: a large bonus for expert 5 forces it into every row's selection
    std::vector<float> bias(static_cast<size_t>(E), 0.0f);
    bias[5] = 2.0f;
    expect_matches_reference(logits, bias.data(), N, o);
    Out plain = route(logits, nullptr, N, o), biased = route(logits, bias.data(), N, o);
    int changed = 0;
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_EQ(biased.idx[n * K], 5);  // ranks first by biased score
      changed += biased.idx[n * K] != plain.idx[n * K] || biased.idx[n * K + 1] != plain.idx[n * K + 1];
      // probs come from the UNBIASED sigmoid scores of the selected experts
      const float s0 = biased.scores[n * E + biased.idx[n * K]];
      const float s1 = biased.scores[n * E + biased.idx[n * K + 1]];
      EXPECT_NEAR(s0, 1.0 / (1.0 + std::exp(-double(logits[n * E + 5]))), 1e-6);
      const double denom = norm ? double(s0) + s1 : 1.0;
      EXPECT_NEAR(biased.probs[n * K], s0 / denom, 1e-6);
      EXPECT_NEAR(biased.probs[n * K + 1], s1 / denom, 1e-6);
    }
    EXPECT_GT(changed, N / 2);  // the bias did move the selection
  }
}

TEST(RouterForward, ScalingFactorMultipliesProbs) {
  const int64_t N = 16, E = 8, K = 3;
  auto logits = randn(static_cast<size_t>(N * E), 4);
  for (RouterOptions o : {make_opt(E, K, RouterScore::softmax), make_opt(E, K, RouterScore::softmax, true, true),
                          make_opt(E, K, RouterScore::sigmoid, false, true)}) {
    Out base = route(logits, nullptr, N, o);
    o.topk_scaling_factor = 2.5f;
    expect_matches_reference(logits, nullptr, N, o);
    Out scaled = route(logits, nullptr, N, o);
    EXPECT_EQ(scaled.idx, base.idx);
    for (size_t i = 0; i < base.probs.size(); ++i) EXPECT_FLOAT_EQ(scaled.probs[i], 2.5f * base.probs[i]);
  }
}

TEST(RouterForward, TiesGoToLowerExpertId) {
  // row 0: all equal; row 1: experts 1 and 2 tie for first; row 2: 0 and 3 tie for second.
  const int64_t E = 4;
  std::vector<float> logits = {0, 0, 0, 0, /**/ 1, 3, 3, 0, /**/ 2, 5, -1, 2};
  Out o = route(logits, nullptr, 3, make_opt(E, 2, RouterScore::softmax));
  EXPECT_EQ(o.idx, (std::vector<int32_t>{0, 1, 1, 2, 1, 0}));
  EXPECT_FLOAT_EQ(o.probs[0], 0.5f);
  EXPECT_FLOAT_EQ(o.probs[3], 0.5f);
  Out k3 = route(logits, nullptr, 3, make_opt(E, 3, RouterScore::softmax, true));
  EXPECT_EQ(k3.idx, (std::vector<int32_t>{0, 1, 2, 1, 2, 0, 1, 0, 3}));
  Out k1 = route(logits, nullptr, 3, make_opt(E, 1, RouterScore::sigmoid));
  EXPECT_EQ(k1.idx, (std::vector<int32_t>{0, 1, 1}));
}

// Backward vs central finite differences of L = <w, topk_probs>, selection held fixed.
void check_router_backward(const RouterOptions& o, const float* bias, uint64_t seed) {
  const int64_t N = 5, E = o.num_experts, K = o.top_k;
  auto logits = gapped_logits(N, E, seed);
  auto w = randn(static_cast<size_t>(N * K), seed + 100);
  Out f = route(logits, bias, N, o);
  std::vector<float> dl(static_cast<size_t>(N * E), 123.0f);  // OVERWRITE contract: garbage is replaced
  router_topk_backward(dl.data(), w.data(), f.idx.data(), f.probs.data(), f.scores.data(),
                       logits.data(), N, o);
  bool flipped = false;
  auto L = [&]() {
    Out g = route(logits, bias, N, o);
    flipped |= g.idx != f.idx;
    return dot(w.data(), g.probs.data(), w.size());
  };
  std::vector<float> fd(static_cast<size_t>(N * E));
  for (size_t i = 0; i < fd.size(); ++i) fd[i] = float(finite_difference(L, logits[i], 1e-2f));
  ASSERT_FALSE(flipped) << "finite-difference step changed the selection; widen the gaps";
  EXPECT_TRUE(all_close(dl, fd, 2e-4, 2e-2));
  // and the gradient is not trivially zero (except where it must be)
  double norm = 0;
  for (float v : dl) norm += double(v) * v;
  // K = 1 has q = 1 identically when the K probs are (re)normalised: plain softmax, norm_topk_prob
  const bool renormalised = (o.score == RouterScore::softmax && !o.pre_softmax) || o.norm_topk_prob;
  if (K == 1 && renormalised) {
    EXPECT_LT(norm, 1e-12);
  } else {
    EXPECT_GT(norm, 1e-6);
  }
}

TEST(RouterBackward, PlainSoftmaxMatchesFiniteDifferences) {
  for (int64_t K : {2, 3, 6}) check_router_backward(make_opt(6, K, RouterScore::softmax), nullptr, 10 + K);
  check_router_backward(make_opt(6, 2, RouterScore::softmax, false, false, 1.7f), nullptr, 17);
}

TEST(RouterBackward, PlainSoftmaxTopOneHasZeroGradient) {
  // Megatron rejects k = 1 here because the gradient vanishes; we allow it and return zeros.
  const int64_t N = 4, E = 5;
  check_router_backward(make_opt(E, 1, RouterScore::softmax), nullptr, 20);
  auto logits = randn(static_cast<size_t>(N * E), 21);
  RouterOptions o = make_opt(E, 1, RouterScore::softmax);
  Out f = route(logits, nullptr, N, o);
  std::vector<float> w(static_cast<size_t>(N), 1.0f), dl(static_cast<size_t>(N * E), 7.0f);
  router_topk_backward(dl.data(), w.data(), f.idx.data(), f.probs.data(), nullptr, logits.data(), N, o);
  for (float v : dl) EXPECT_EQ(v, 0.0f);
}

TEST(RouterBackward, PreSoftmaxMatchesFiniteDifferences) {
  for (int64_t K : {1, 2, 4})
    for (bool norm : {false, true})
      check_router_backward(make_opt(6, K, RouterScore::softmax, true, norm), nullptr, 30 + K + 5 * norm);
  check_router_backward(make_opt(6, 2, RouterScore::softmax, true, true, 0.5f), nullptr, 39);
  // unselected experts get gradient through the full softmax (pre-softmax, no norm)
  const int64_t N = 1, E = 4;
  std::vector<float> logits = {2.0f, 0.0f, -1.0f, 1.0f};
  RouterOptions o = make_opt(E, 1, RouterScore::softmax, true);
  Out f = route(logits, nullptr, N, o);
  std::vector<float> w = {1.0f}, dl(static_cast<size_t>(E));
  router_topk_backward(dl.data(), w.data(), f.idx.data(), f.probs.data(), f.scores.data(), logits.data(), N, o);
  EXPECT_LT(dl[1], 0.0f);
  EXPECT_NEAR(dl[1], -f.scores[0] * f.scores[1], 1e-7);
}

TEST(RouterBackward, SigmoidMatchesFiniteDifferences) {
  for (int64_t K : {1, 2, 3})
    for (bool norm : {false, true})
      check_router_backward(make_opt(6, K, RouterScore::sigmoid, false, norm), nullptr, 40 + K + 5 * norm);
  std::vector<float> bias = {0.0f, 0.3f, -0.2f, 0.0f, 0.25f, -0.35f};
  check_router_backward(make_opt(6, 2, RouterScore::sigmoid, false, true, 2.5f), bias.data(), 49);
}

// ---- aux loss -------------------------------------------------------------------------------

TEST(AuxLoss, PerfectlyBalancedRoutingGivesCoeff) {
  // E = 4, K = 2, N = T = 4; rows prefer {0,1}, {2,3}, {0,2}, {1,3}: every count is N*K/E = 2,
  // so f_i = 1/E and L = alpha * E * sum_i f_i P_i = alpha * sum_i P_i = alpha.
  const int64_t N = 4, E = 4;
  std::vector<float> logits = {3, 2, -1, -2, /**/ -1, -2, 3, 2, /**/ 3, -1, 2, -2, /**/ -1, 3, -2, 2};
  for (RouterScore sc : {RouterScore::softmax, RouterScore::sigmoid}) {
    RouterOptions o = make_opt(E, 2, sc);
    std::vector<float> s(static_cast<size_t>(N * E));
    std::vector<int64_t> counts(static_cast<size_t>(E), 0);
    aux_loss_scores(s.data(), counts.data(), logits.data(), N, {}, o);
    EXPECT_EQ(counts, (std::vector<int64_t>{2, 2, 2, 2}));
    EXPECT_NEAR(aux_loss_value(s.data(), counts.data(), N, {}, switch_loss_scale(0.01, E, 2, N), o), 0.01, 1e-8);
  }
  // all tokens on {0,1}: f_0 = f_1 = 1/2, P_0 + P_1 close to 1, so L is close to 2 alpha
  std::vector<float> skew = {9, 9, 0, 0, 9, 9, 0, 0, 9, 9, 0, 0, 9, 9, 0, 0};
  RouterOptions o = make_opt(E, 2, RouterScore::softmax);
  std::vector<float> s(static_cast<size_t>(N * E));
  std::vector<int64_t> counts(static_cast<size_t>(E), 0);
  aux_loss_scores(s.data(), counts.data(), skew.data(), N, {}, o);
  // Element by element: GCC 12.2 with -O2 -march=native (AVX-512VL) miscompiles the literal
  // std::vector<int64_t>{4, 4, 0, 0} into {4, 4, 4, 4} (one ymm broadcast).
  EXPECT_EQ(counts[0], 4);
  EXPECT_EQ(counts[1], 4);
  EXPECT_EQ(counts[2], 0);
  EXPECT_EQ(counts[3], 0);
  EXPECT_NEAR(aux_loss_value(s.data(), counts.data(), N, {}, switch_loss_scale(1.0, E, 2, N), o), 2.0, 1e-3);
}

TEST(AuxLoss, ScoresCountsAndValueMatchFormula) {
  const int64_t N = 23, E = 7, K = 3, T = 4 * N;  // T as if gathered over 4 TP-CP ranks
  auto logits = randn(static_cast<size_t>(N * E), 50, 1.5f);
  for (RouterScore sc : {RouterScore::softmax, RouterScore::sigmoid}) {
    RouterOptions o = make_opt(E, K, sc);
    std::vector<float> s(static_cast<size_t>(N * E));
    std::vector<int64_t> counts(static_cast<size_t>(E), 5);  // counts ACCUMULATE onto the prefill
    aux_loss_scores(s.data(), counts.data(), logits.data(), N, {}, o);
    std::vector<double> sref(static_cast<size_t>(N * E));
    std::vector<int64_t> cref(static_cast<size_t>(E), 5);
    for (int64_t n = 0; n < N; ++n) {
      const float* l = logits.data() + n * E;
      double z = 0;
      for (int64_t e = 0; e < E; ++e)
        z += (sref[n * E + e] = sc == RouterScore::softmax ? std::exp(double(l[e])) : 1.0 / (1.0 + std::exp(-double(l[e]))));
      for (int64_t e = 0; e < E; ++e) sref[n * E + e] /= z;  // softmax, or sigmoid / row sum
      std::vector<int> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sref[n * E + a] > sref[n * E + b]; });
      for (int64_t j = 0; j < K; ++j) ++cref[order[j]];
    }
    EXPECT_EQ(counts, cref);
    std::vector<float> sreff(sref.begin(), sref.end());
    EXPECT_TRUE(all_close(s, sreff, 1e-7, 1e-5));
    double acc = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t n = 0; n < N; ++n) acc += double(counts[e]) * sref[n * E + e];
    const double want = 0.02 * E / (double(K) * T * T) * acc;
    EXPECT_NEAR(aux_loss_value(s.data(), counts.data(), N, {}, switch_loss_scale(0.02, E, K, T), o), want, 1e-6 * want);
  }
}

TEST(AuxLoss, BackwardMatchesFiniteDifferencesWithCountsFixed) {
  const int64_t N = 6, E = 5, K = 2, T = 12;
  for (RouterScore sc : {RouterScore::softmax, RouterScore::sigmoid}) {
    RouterOptions o = make_opt(E, K, sc);
    auto logits = randn(static_cast<size_t>(N * E), 60);
    std::vector<float> s(static_cast<size_t>(N * E));
    std::vector<int64_t> counts(static_cast<size_t>(E), 0);
    aux_loss_scores(s.data(), counts.data(), logits.data(), N, {}, o);
    const float coeff = 0.5f, scale = 3.0f;
    auto L = [&]() {  // counts held constant: only s moves
      std::vector<float> s2(static_cast<size_t>(N * E));
      std::vector<int64_t> dummy(static_cast<size_t>(E), 0);
      aux_loss_scores(s2.data(), dummy.data(), logits.data(), N, {}, o);
      return double(scale) * aux_loss_value(s2.data(), counts.data(), N, {}, switch_loss_scale(coeff, E, K, T), o);
    };
    std::vector<float> fd(static_cast<size_t>(N * E));
    for (size_t i = 0; i < fd.size(); ++i) fd[i] = float(finite_difference(L, logits[i], 1e-2f));
    auto prefill = randn(static_cast<size_t>(N * E), 61);
    std::vector<float> dl = prefill;  // dlogits ACCUMULATE
    aux_loss_backward(dl.data(), s.data(), counts.data(), logits.data(), N, {}, switch_loss_scale(coeff, E, K, T), scale, o);
    std::vector<float> delta(static_cast<size_t>(N * E));
    for (size_t i = 0; i < dl.size(); ++i) delta[i] = dl[i] - prefill[i];
    EXPECT_TRUE(all_close(delta, fd, 2e-5, 2e-2));
    double norm = 0;
    for (float v : fd) norm += double(v) * v;
    EXPECT_GT(norm, 1e-4);
  }
}

// ---- z-loss ---------------------------------------------------------------------------------

TEST(ZLoss, ValueAndBackward) {
  const int64_t N = 9, E = 6;
  auto logits = randn(static_cast<size_t>(N * E), 70, 2.0f);
  std::vector<float> lse(static_cast<size_t>(N));
  const float coeff = 1e-3f, scale = 4.0f;
  const double L = z_loss_forward(lse.data(), logits.data(), N, E, coeff);
  double want = 0;
  for (int64_t n = 0; n < N; ++n) {
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += std::exp(double(logits[n * E + e]));
    EXPECT_NEAR(lse[n], std::log(z), 1e-5);
    want += std::log(z) * std::log(z);
  }
  EXPECT_NEAR(L, coeff * want / N, 1e-9);

  auto f = [&]() {
    std::vector<float> l2(static_cast<size_t>(N));
    return double(scale) * z_loss_forward(l2.data(), logits.data(), N, E, coeff);
  };
  std::vector<float> fd(static_cast<size_t>(N * E));
  for (size_t i = 0; i < fd.size(); ++i) fd[i] = float(finite_difference(f, logits[i], 1e-2f));
  std::vector<float> dl(static_cast<size_t>(N * E), 1.0f);  // ACCUMULATES onto 1
  z_loss_backward(dl.data(), logits.data(), lse.data(), N, E, coeff, scale);
  for (float& v : dl) v -= 1.0f;
  EXPECT_TRUE(all_close(dl, fd, 1e-6, 1e-2));
  EXPECT_EQ(z_loss_forward(lse.data(), logits.data(), 0, E, coeff), 0.0);
}

// ---- errors ---------------------------------------------------------------------------------

TEST(RouterErrors, BadOptionsAndInputsThrow) {
  const int64_t N = 2, E = 4;
  auto logits = randn(static_cast<size_t>(N * E), 80);
  std::vector<int32_t> idx(static_cast<size_t>(N * E));
  std::vector<float> probs(static_cast<size_t>(N * E)), scores(static_cast<size_t>(N * E)), bias(static_cast<size_t>(E), 0.0f);
  auto fwd = [&](RouterOptions o, const float* b = nullptr, float* sc = nullptr) {
    router_topk_forward(idx.data(), probs.data(), sc ? sc : scores.data(), logits.data(), b, N, o);
  };
  EXPECT_THROW(fwd(make_opt(E, 0, RouterScore::softmax)), ff::Error);
  EXPECT_THROW(fwd(make_opt(E, 5, RouterScore::softmax)), ff::Error);
  EXPECT_THROW(fwd(make_opt(0, 1, RouterScore::softmax)), ff::Error);
  EXPECT_THROW(fwd(make_opt(E, 2, RouterScore::sigmoid, true)), ff::Error);       // pre_softmax + sigmoid
  EXPECT_THROW(fwd(make_opt(E, 2, RouterScore::softmax), bias.data()), ff::Error);  // bias needs sigmoid
  EXPECT_NO_THROW(fwd(make_opt(E, 2, RouterScore::sigmoid), bias.data()));
  RouterOptions pre = make_opt(E, 2, RouterScore::softmax, true);
  EXPECT_THROW(router_topk_forward(idx.data(), probs.data(), nullptr, logits.data(), nullptr, N, pre), ff::Error);
  logits[5] = NAN;
  try {
    fwd(make_opt(E, 2, RouterScore::softmax));
    ADD_FAILURE() << "NaN logits accepted";
  } catch (const ff::Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 1"), std::string::npos) << e.what();
  }
  logits[5] = 0.0f;
  // backward: out-of-range and duplicate expert ids
  RouterOptions o = make_opt(E, 2, RouterScore::softmax);
  std::vector<float> w(static_cast<size_t>(N * 2), 1.0f), dl(static_cast<size_t>(N * E));
  std::vector<int32_t> bad = {0, 4, 1, 2};
  try {
    router_topk_backward(dl.data(), w.data(), bad.data(), probs.data(), nullptr, logits.data(), N, o);
    ADD_FAILURE() << "out-of-range expert accepted";
  } catch (const ff::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  bad = {0, 1, 2, 2};
  EXPECT_THROW(router_topk_backward(dl.data(), w.data(), bad.data(), probs.data(), nullptr, logits.data(), N, o), ff::Error);
  std::vector<int64_t> counts(static_cast<size_t>(E), 0);
  EXPECT_THROW(aux_loss_value(scores.data(), counts.data(), N, {}, NAN, o), ff::Error);
  EXPECT_THROW(aux_loss_value(scores.data(), counts.data(), N, BalanceGroups{1, 1, 0}, 1.0, o), ff::Error);  // row 1 in group 1 of 1
  EXPECT_THROW(z_loss_forward(probs.data(), logits.data(), N, 0, 0.1f), ff::Error);
}

}  // namespace
}  // namespace ff::cpu
