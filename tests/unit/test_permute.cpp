// Token permutation for MoE dispatch (specs/parallelism-and-moe.md §7.2, §7.4, §7.6): capacity,
// drop policies worked by hand, plan order (the spec's worked example), dropless and padded
// plans, and permute / unpermute forward-backward as exact adjoints with their contracts.
#include <omp.h>

#include <cstring>
#include <set>

#include "core/check.h"
#include "core/rng.h"
#include "kernels/cpu/permute.h"
#include "test_util.h"

namespace ff::cpu {
namespace {

using ff::test::all_close;
using ff::test::dot;
using ff::test::randn;

// Element-by-element comparison with a list. (GCC 12.2 at -O2 -march=native with AVX-512VL
// miscompiles some int64 vector literals, e.g. std::vector<int64_t>{4, 4, 0, 0} -> {4, 4, 4, 4};
// every expectation here is checked both ways: by this helper and by the structural checks.)
template <class T>
::testing::AssertionResult same(const std::vector<T>& got, std::initializer_list<long long> want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  size_t i = 0;
  for (long long w : want) {
    if (static_cast<long long>(got[i]) != w)
      return ::testing::AssertionFailure() << "at " << i << ": got " << got[i] << ", want " << w;
    ++i;
  }
  return ::testing::AssertionSuccess();
}

// The hand-worked routing: N = 6, K = 2, E = 3. Slot s = 2n + j.
//   t0: e0 .60 (s0)  e1 .40 (s1)       expert 0 slots: s0 t0 .60, s2 t1 .30, s5 t2 .50, s6 t3 .90
//   t1: e0 .30 (s2)  e2 .70 (s3)       expert 1 slots: s1 t0 .40, s4 t2 .50, s9 t4 .20, s10 t5 .55
//   t2: e1 .50 (s4)  e0 .50 (s5)       expert 2 slots: s3 t1 .70, s7 t3 .10, s8 t4 .80, s11 t5 .45
//   t3: e0 .90 (s6)  e2 .10 (s7)
//   t4: e2 .80 (s8)  e1 .20 (s9)
//   t5: e1 .55 (s10) e2 .45 (s11)
const std::vector<int32_t> kIdx = {0, 1, 0, 2, 1, 0, 0, 2, 2, 1, 1, 2};
const std::vector<float> kProb = {.60f, .40f, .30f, .70f, .50f, .50f, .90f, .10f, .80f, .20f, .55f, .45f};

TEST(Capacity, Formula) {
  EXPECT_EQ(expert_capacity(6, 2, 3, 0.5), 2);    // ceil(12/3 * 0.5) = 2
  EXPECT_EQ(expert_capacity(6, 2, 3, 1.0), 4);    // 4
  EXPECT_EQ(expert_capacity(6, 2, 3, 2.0), 6);    // ceil(8) clamped to N = 6
  EXPECT_EQ(expert_capacity(10, 2, 8, 1.25), 4);  // ceil(2.5 * 1.25 = 3.125)
  EXPECT_EQ(expert_capacity(7, 1, 3, 1.0), 3);    // ceil(2.33)
  EXPECT_EQ(expert_capacity(0, 2, 4, 1.0), 0);
  EXPECT_THROW(expert_capacity(6, 2, 3, 0.0), ff::Error);
  EXPECT_THROW(expert_capacity(6, 2, 3, -1.0), ff::Error);
  EXPECT_THROW(expert_capacity(6, 4, 3, 1.0), ff::Error);  // K > E
}

TEST(Capacity, PositionPolicyKeepsFirstCInTokenOrder) {
  const int64_t C = expert_capacity(6, 2, 3, 0.5);
  ASSERT_EQ(C, 2);
  std::vector<uint8_t> keep(12, 7);
  capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, C, DropPolicy::position);
  // e0 keeps s0 (t0), s2 (t1); e1 keeps s1 (t0), s4 (t2); e2 keeps s3 (t1), s7 (t3)
  EXPECT_TRUE(same(keep, {1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0}));
}

TEST(Capacity, ProbsPolicyKeepsLargestProbs) {
  std::vector<uint8_t> keep(12, 7);
  capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, 2, DropPolicy::probs);
  // e0 keeps s6 (.90), s0 (.60); e1 keeps s10 (.55), s4 (.50); e2 keeps s8 (.80), s3 (.70)
  EXPECT_TRUE(same(keep, {1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0}));
  // ties go to the lower token: N = 4, K = 1, E = 2, everyone on expert 1 with prob .5 but t2 .7
  std::vector<int32_t> idx = {1, 1, 1, 1};
  std::vector<float> p = {.5f, .5f, .7f, .5f};
  std::vector<uint8_t> k2(4);
  capacity_keep_mask(k2.data(), idx.data(), p.data(), 4, 1, 2, 2, DropPolicy::probs);
  EXPECT_TRUE(same(k2, {1, 0, 1, 0}));
  // C >= routed count keeps everything; C = 0 drops everything
  capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, 4, DropPolicy::probs);
  for (uint8_t v : keep) EXPECT_EQ(v, 1);
  capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, 0, DropPolicy::position);
  for (uint8_t v : keep) EXPECT_EQ(v, 0);
}

TEST(DispatchPlan, DroppingWithKeepMask) {
  std::vector<uint8_t> keep(12);
  capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, 2, DropPolicy::probs);
  DispatchPlan plan;
  build_dispatch_plan(plan, kIdx.data(), kProb.data(), keep.data(), 6, 2, 3, -1);
  // expert-major, token-ascending: e0 {t0 s0, t3 s6}, e1 {t2 s4, t5 s10}, e2 {t1 s3, t4 s8}
  EXPECT_TRUE(same(plan.row_token, {0, 3, 2, 5, 1, 4}));
  EXPECT_TRUE(same(plan.row_slot, {0, 6, 4, 10, 3, 8}));
  EXPECT_TRUE(all_close(plan.row_prob, {.60f, .90f, .50f, .55f, .70f, .80f}, 0, 0));
  EXPECT_TRUE(same(plan.tokens_per_expert, {2, 2, 2}));
}

TEST(DispatchPlan, SpecWorkedExampleBothRanks) {
  // §7.4: EP = 2, E = 4, K = 2, N = 4 per rank.
  std::vector<float> p(8, 0.5f);
  DispatchPlan plan;
  const std::vector<int32_t> rank0 = {0, 2, 1, 2, 0, 3, 2, 3};
  build_dispatch_plan(plan, rank0.data(), p.data(), nullptr, 4, 2, 4, -1);
  EXPECT_TRUE(same(plan.tokens_per_expert, {2, 1, 3, 2}));
  EXPECT_TRUE(same(plan.row_token, {0, 2, 1, 0, 1, 3, 2, 3}));
  // input_splits = rows for the experts of each EP rank: [3, 5]
  EXPECT_EQ(plan.tokens_per_expert[0] + plan.tokens_per_expert[1], 3);
  EXPECT_EQ(plan.tokens_per_expert[2] + plan.tokens_per_expert[3], 5);
  const std::vector<int32_t> rank1 = {1, 3, 0, 1, 2, 3, 0, 2};
  build_dispatch_plan(plan, rank1.data(), p.data(), nullptr, 4, 2, 4, -1);  // reuses storage
  EXPECT_TRUE(same(plan.tokens_per_expert, {2, 2, 2, 2}));
  EXPECT_TRUE(same(plan.row_token, {1, 3, 0, 1, 2, 3, 0, 2}));
  EXPECT_TRUE(same(plan.row_slot, {2, 6, 0, 3, 4, 7, 1, 5}));
  EXPECT_EQ(plan.num_rows(), 8);
}

TEST(DispatchPlan, DroplessEveryTokenInExactlyKRows) {
  const int64_t N = 50, E = 8, K = 3;
  Rng rng(5, "route");
  std::vector<int32_t> idx(N * K);
  const std::vector<int32_t> allowed = {0, 1, 2, 4, 5, 6};  // experts 3 and 7 get no tokens
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int32_t> pool = allowed;
    for (int64_t j = 0; j < K; ++j) {
      const size_t pick = rng.below(pool.size());
      idx[n * K + j] = pool[pick];
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(pick));
    }
  }
  auto prob = randn(N * K, 6);
  DispatchPlan plan;
  build_dispatch_plan(plan, idx.data(), prob.data(), nullptr, N, K, E, -1);
  ASSERT_EQ(plan.num_rows(), N * K);
  EXPECT_EQ(plan.tokens_per_expert[3], 0);
  EXPECT_EQ(plan.tokens_per_expert[7], 0);
  std::vector<int> per_token(N, 0);
  std::set<int32_t> slots;
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e) {
    int32_t prev = -1;
    for (int64_t i = 0; i < plan.tokens_per_expert[e]; ++i, ++r) {
      const int32_t t = plan.row_token[r], s = plan.row_slot[r];
      EXPECT_GT(t, prev);  // token-ascending inside an expert
      prev = t;
      EXPECT_EQ(s / K, t);
      EXPECT_EQ(idx[s], e);  // expert-major
      EXPECT_EQ(plan.row_prob[r], prob[s]);
      ++per_token[t];
      slots.insert(s);
    }
  }
  EXPECT_EQ(r, N * K);
  EXPECT_EQ(int64_t(slots.size()), N * K);
  for (int c : per_token) EXPECT_EQ(c, K);
}

TEST(DispatchPlan, PadToCapacity) {
  DispatchPlan plan;
  // no dropping, pad to 5: fill-ins are the lowest tokens not already in the expert's rows
  build_dispatch_plan(plan, kIdx.data(), kProb.data(), nullptr, 6, 2, 3, 5);
  EXPECT_TRUE(same(plan.tokens_per_expert, {5, 5, 5}));
  EXPECT_TRUE(same(plan.row_token, {0, 1, 2, 3, 4, /**/ 0, 2, 4, 5, 1, /**/ 1, 3, 4, 5, 0}));
  EXPECT_TRUE(same(plan.row_slot, {0, 2, 5, 6, -1, /**/ 1, 4, 9, 10, -1, /**/ 3, 7, 8, 11, -1}));
  // position drop at C = 2, pad to 3: e0 keeps t0, t1 and fills t2 (routed there but dropped)
  std::vector<uint8_t> keep(12);
  capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, 2, DropPolicy::position);
  build_dispatch_plan(plan, kIdx.data(), kProb.data(), keep.data(), 6, 2, 3, 3);
  EXPECT_TRUE(same(plan.row_token, {0, 1, 2, /**/ 0, 2, 1, /**/ 1, 3, 0}));
  EXPECT_TRUE(same(plan.row_slot, {0, 2, -1, /**/ 1, 4, -1, /**/ 3, 7, -1}));
  // every expert exactly C rows; pad rows prob 0 and slot -1, real rows carry their prob
  const int64_t N = 40, E = 6, K = 2;
  Rng rng(9, "pad");
  std::vector<int32_t> idx(N * K);
  for (int64_t n = 0; n < N; ++n) {
    idx[n * K] = int32_t(rng.below(E));
    idx[n * K + 1] = int32_t((idx[n * K] + 1 + rng.below(E - 1)) % E);
  }
  auto prob = randn(N * K, 10);
  for (float& v : prob) v = std::fabs(v) + 0.01f;
  const int64_t C = expert_capacity(N, K, E, 1.0);
  keep.resize(N * K);
  capacity_keep_mask(keep.data(), idx.data(), prob.data(), N, K, E, C, DropPolicy::probs);
  build_dispatch_plan(plan, idx.data(), prob.data(), keep.data(), N, K, E, C);
  ASSERT_EQ(plan.num_rows(), E * C);
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(plan.tokens_per_expert[e], C);
    std::set<int32_t> tokens;
    for (int64_t r = e * C; r < (e + 1) * C; ++r) {
      tokens.insert(plan.row_token[r]);
      if (plan.row_slot[r] < 0) {
        EXPECT_EQ(plan.row_prob[r], 0.0f);
      } else {
        EXPECT_EQ(idx[plan.row_slot[r]], e);
        EXPECT_EQ(plan.row_prob[r], prob[plan.row_slot[r]]);
        EXPECT_TRUE(keep[plan.row_slot[r]]);
      }
    }
    EXPECT_EQ(int64_t(tokens.size()), C);  // no token twice in one expert
  }
}

// Forward gathers and scatter-adds: round trip, adjoints, contracts, determinism.
struct Case {
  DispatchPlan plan;
  int64_t N, D;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  const int64_t N = 33, K = 2, E = 5, D = 19;
  Rng rng(11, "cases");
  std::vector<int32_t> idx(N * K);
  for (int64_t n = 0; n < N; ++n) {
    idx[n * K] = int32_t(rng.below(E));
    idx[n * K + 1] = int32_t((idx[n * K] + 1 + rng.below(E - 1)) % E);
  }
  auto prob = randn(N * K, 12);
  Case dropless{{}, N, D}, dropped{{}, N, D}, padded{{}, N, D};
  build_dispatch_plan(dropless.plan, idx.data(), prob.data(), nullptr, N, K, E, -1);
  std::vector<uint8_t> keep(N * K);
  const int64_t C = expert_capacity(N, K, E, 0.6);
  capacity_keep_mask(keep.data(), idx.data(), prob.data(), N, K, E, C, DropPolicy::position);
  build_dispatch_plan(dropped.plan, idx.data(), prob.data(), keep.data(), N, K, E, -1);
  build_dispatch_plan(padded.plan, idx.data(), prob.data(), keep.data(), N, K, E, C);
  out.push_back(std::move(dropless));
  out.push_back(std::move(dropped));
  out.push_back(std::move(padded));
  return out;
}

TEST(Permute, RoundTripIsKTimesInputDropless) {
  Case c = std::move(cases()[0]);
  const int64_t R = c.plan.num_rows();
  ASSERT_EQ(R, 2 * c.N);
  auto x = randn(c.N * c.D, 20);
  std::vector<float> rows(R * c.D, NAN), y(c.N * c.D, NAN);
  permute_forward(rows.data(), x.data(), c.plan, c.D);
  for (int64_t r = 0; r < R; ++r)
    EXPECT_EQ(0, std::memcmp(&rows[r * c.D], &x[c.plan.row_token[r] * c.D], sizeof(float) * c.D));
  unpermute_forward(y.data(), rows.data(), c.plan, c.N, c.D);
  std::vector<float> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = 2.0f * x[i];
  EXPECT_TRUE(all_close(y, want, 0, 0));  // x + x == 2x exactly
}

TEST(Permute, AdjointIdentitiesAndContracts) {
  for (Case& c : cases()) {
    const int64_t R = c.plan.num_rows(), N = c.N, D = c.D;
    auto x = randn(N * D, 30), r = randn(R * D, 31), yy = randn(N * D, 32);
    std::vector<float> rows(R * D, NAN), dx(N * D, 0.0f);
    permute_forward(rows.data(), x.data(), c.plan, D);  // OVERWRITES the NaNs
    permute_backward(dx.data(), r.data(), c.plan, N, D);
    // <permute(x), r> == <x, permute_backward(r)>
    const double a = dot(rows.data(), r.data(), rows.size()), b = dot(x.data(), dx.data(), x.size());
    EXPECT_NEAR(a, b, 1e-4 * (1 + std::fabs(a)));
    // <unpermute(r), y> == <r, unpermute_backward(y)>
    std::vector<float> u(N * D, NAN), dr(R * D, NAN);
    unpermute_forward(u.data(), r.data(), c.plan, N, D);  // OVERWRITES; rowless tokens get 0
    unpermute_backward(dr.data(), yy.data(), c.plan, D);   // OVERWRITES
    for (float v : u) ASSERT_FALSE(std::isnan(v));
    for (float v : dr) ASSERT_FALSE(std::isnan(v));
    const double p = dot(u.data(), yy.data(), u.size()), q = dot(r.data(), dr.data(), r.size());
    EXPECT_NEAR(p, q, 1e-4 * (1 + std::fabs(p)));
    // permute_backward ACCUMULATES: prefill + g + g
    auto pre = randn(N * D, 33);
    std::vector<float> acc = pre;
    permute_backward(acc.data(), r.data(), c.plan, N, D);
    permute_backward(acc.data(), r.data(), c.plan, N, D);
    std::vector<float> want(N * D);
    for (size_t i = 0; i < want.size(); ++i) want[i] = pre[i] + 2.0f * dx[i];
    EXPECT_TRUE(all_close(acc, want, 1e-5, 1e-5));
  }
}

TEST(Permute, TokensWithoutRowsGetZero) {
  Case c = std::move(cases()[1]);  // the dropped plan
  // drop everything of one token by hand to be sure one exists
  DispatchPlan p = c.plan;
  const int32_t victim = p.row_token[0];
  for (size_t r = p.row_token.size(); r-- > 0;)
    if (p.row_token[r] == victim) {
      p.row_token.erase(p.row_token.begin() + r);
      p.row_slot.erase(p.row_slot.begin() + r);
      p.row_prob.erase(p.row_prob.begin() + r);
    }
  auto rows = randn(p.num_rows() * c.D, 40);
  std::vector<float> y(c.N * c.D, NAN);
  unpermute_forward(y.data(), rows.data(), p, c.N, c.D);
  for (int64_t d = 0; d < c.D; ++d) EXPECT_EQ(y[victim * c.D + d], 0.0f);
}

TEST(Permute, ScatterAddSumsInRowOrderForAnyThreadCount) {
  // Many rows per token (K = 6 of E = 8) so that the order of the float sums matters.
  const int64_t N = 9, E = 8, K = 6, D = 23;
  Rng rng(51, "many");
  std::vector<int32_t> idx(N * K);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int32_t> pool = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int64_t j = 0; j < K; ++j) {
      const size_t pick = rng.below(pool.size());
      idx[n * K + j] = pool[pick];
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(pick));
    }
  }
  std::vector<float> prob(N * K, 1.0f);
  Case c{{}, N, D};
  build_dispatch_plan(c.plan, idx.data(), prob.data(), nullptr, N, K, E, -1);
  const int64_t R = c.plan.num_rows();
  auto g = randn(R * D, 50, 3.0f);
  std::vector<float> serial(N * D, 0.0f), ys(N * D, 0.0f);
  for (int64_t r = 0; r < R; ++r)  // the reference order: by row index
    for (int64_t d = 0; d < D; ++d) serial[c.plan.row_token[r] * D + d] += g[r * D + d];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < D; ++d) ys[c.plan.row_token[r] * D + d] += g[r * D + d];
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<float> dx(N * D, 0.0f), y(N * D, NAN);
    permute_backward(dx.data(), g.data(), c.plan, N, D);
    unpermute_forward(y.data(), g.data(), c.plan, N, D);
    EXPECT_EQ(0, std::memcmp(dx.data(), serial.data(), sizeof(float) * dx.size())) << threads;
    EXPECT_EQ(0, std::memcmp(y.data(), ys.data(), sizeof(float) * y.size())) << threads;
  }
  omp_set_num_threads(saved);
}

TEST(PermuteErrors, BadInputThrows) {
  DispatchPlan plan;
  std::vector<int32_t> idx = kIdx;
  idx[5] = 3;  // E = 3
  try {
    build_dispatch_plan(plan, idx.data(), kProb.data(), nullptr, 6, 2, 3, -1);
    ADD_FAILURE() << "expert id 3 accepted with E = 3";
  } catch (const ff::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  idx[5] = -1;
  EXPECT_THROW(build_dispatch_plan(plan, idx.data(), kProb.data(), nullptr, 6, 2, 3, -1), ff::Error);
  idx[5] = 1;  // t2 would hold expert 1 twice
  EXPECT_THROW(build_dispatch_plan(plan, idx.data(), kProb.data(), nullptr, 6, 2, 3, -1), ff::Error);
  std::vector<uint8_t> keep(12);
  EXPECT_THROW(capacity_keep_mask(keep.data(), idx.data(), kProb.data(), 6, 2, 3, 2, DropPolicy::probs), ff::Error);
  EXPECT_THROW(capacity_keep_mask(keep.data(), kIdx.data(), kProb.data(), 6, 2, 3, -1, DropPolicy::probs), ff::Error);
  // pad_to_capacity: beyond N, below -1, or smaller than what an expert keeps
  EXPECT_THROW(build_dispatch_plan(plan, kIdx.data(), kProb.data(), nullptr, 6, 2, 3, 7), ff::Error);
  EXPECT_THROW(build_dispatch_plan(plan, kIdx.data(), kProb.data(), nullptr, 6, 2, 3, -2), ff::Error);
  EXPECT_THROW(build_dispatch_plan(plan, kIdx.data(), kProb.data(), nullptr, 6, 2, 3, 3), ff::Error);
  EXPECT_THROW(build_dispatch_plan(plan, kIdx.data(), kProb.data(), nullptr, 6, 4, 3, -1), ff::Error);
  // scatter-adds check row tokens against N; plans with mismatched arrays are refused
  build_dispatch_plan(plan, kIdx.data(), kProb.data(), nullptr, 6, 2, 3, -1);
  std::vector<float> g(plan.num_rows() * 4, 1.0f), dx(6 * 4, 0.0f);
  EXPECT_THROW(permute_backward(dx.data(), g.data(), plan, 5, 4), ff::Error);
  EXPECT_THROW(unpermute_forward(dx.data(), g.data(), plan, 5, 4), ff::Error);
  DispatchPlan broken = plan;
  broken.row_prob.pop_back();
  EXPECT_THROW(permute_forward(g.data(), dx.data(), broken, 4), ff::Error);
}

}  // namespace
}  // namespace ff::cpu
