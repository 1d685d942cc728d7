// Distillation: the KL kernel against finite differences and a double-precision reference; the
// objective's gradient at tau = 1 is (p_s - p_t) / T, and with the LM loss kept it adds the
// cross-entropy's gradient and rescales KD by CE / KD; a student that equals its teacher has zero
// loss and zero gradient; the student moves towards the teacher.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "layers/vocab_parallel.h"
#include "models/decoder_lm.h"
#include "optim/optimizer.h"
#include "train/objective.h"
#include "train/pipeline.h"
#include "test_util.h"

namespace ff {
namespace {

TEST(Distillation, KlKernelMatchesReferenceAndFiniteDifferences) {
  const int64_t N = 3, V = 11;
  const float tau = 1.7f;
  auto zs = test::randn(N * V, 1, 2.0f), zt = test::randn(N * V, 2, 2.0f);
  std::vector<float> kl(N), ls(N), lt(N);
  vocab_parallel_kl_forward(kl.data(), ls.data(), lt.data(), zs.data(), zt.data(), N, V, tau, nullptr);
  auto reference = [&](const std::vector<float>& s, int64_t n) {  // sum p_t log(p_t / p_s), in double
    double ms = -1e30, mt = -1e30, ss = 0, st = 0;
    for (int64_t j = 0; j < V; ++j) {
      ms = std::max(ms, double(s[n * V + j]) / tau);
      mt = std::max(mt, double(zt[n * V + j]) / tau);
    }
    for (int64_t j = 0; j < V; ++j) {
      ss += std::exp(double(s[n * V + j]) / tau - ms);
      st += std::exp(double(zt[n * V + j]) / tau - mt);
    }
    double k = 0;
    for (int64_t j = 0; j < V; ++j) {
      const double lps = double(s[n * V + j]) / tau - ms - std::log(ss), lpt = double(zt[n * V + j]) / tau - mt - std::log(st);
      k += std::exp(lpt) * (lpt - lps);
    }
    return k;
  };
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(kl[n], reference(zs, n), 1e-5) << n;
  const std::vector<float> g = {0.5f, 1.0f, 2.0f};
  std::vector<float> d(N * V);
  vocab_parallel_kl_backward(d.data(), zs.data(), zt.data(), ls.data(), lt.data(), g.data(), N, V, tau);
  for (int64_t i = 0; i < N * V; i += 4) {  // d (sum_n g_n kl_n) / d zs_i, central differences in double
    auto shifted = zs;
    const double h = 1e-3;
    shifted[i] = zs[i] + h;
    const double up = reference(shifted, i / V);
    shifted[i] = zs[i] - h;
    const double down = reference(shifted, i / V);
    EXPECT_NEAR(d[i], g[i / V] * (up - down) / (2 * h), 1e-4) << i;
  }
}

ModelConfig tiny() { return test::small_model("*-*E", 31); }

// The objective on hand-made logits: N = 4 rows of a vocabulary of 7, row 2 without a target.
struct KdRows {
  static constexpr int64_t N = 4, V = 7;
  std::vector<float> zs = test::randn(N * V, 11, 1.5f), zt = test::randn(N * V, 12, 1.5f);
  std::vector<int32_t> targets = {3, 0, -1, 6};
  std::vector<float> logp, lse;
  std::vector<double> ps, pt;  // softmax at tau = 1, in double
  KdRows() {
    for (int64_t n = 0; n < N; ++n) {
      double ms = -1e30, mt = -1e30, ss = 0, st = 0;
      for (int64_t j = 0; j < V; ++j) ms = std::max(ms, double(zs[n * V + j])), mt = std::max(mt, double(zt[n * V + j]));
      for (int64_t j = 0; j < V; ++j) ss += std::exp(zs[n * V + j] - ms), st += std::exp(zt[n * V + j] - mt);
      for (int64_t j = 0; j < V; ++j) {
        ps.push_back(std::exp(zs[n * V + j] - ms) / ss);
        pt.push_back(std::exp(zt[n * V + j] - mt) / st);
      }
      lse.push_back(static_cast<float>(ms + std::log(ss)));
      logp.push_back(targets[n] >= 0 ? static_cast<float>(zs[n * V + targets[n]] - ms - std::log(ss)) : 0.0f);
    }
  }
  StudentLogits logits() const {
    StudentLogits in;
    in.logits = zs.data();
    in.lse = lse.data();
    in.rows = HeadRows{logp.data(), targets.data(), nullptr, 1, N, nullptr};
    in.S_full = N;
    in.Vl = V;
    in.companion_logits = zt.data();
    in.companion_Vl = V;
    return in;
  }
  double kl(int64_t n) const {
    double k = 0;
    for (int64_t j = 0; j < V; ++j) k += pt[n * V + j] * std::log(pt[n * V + j] / ps[n * V + j]);
    return k;
  }
};

// methods.md §3.10: at tau = 1 the gradient of the student's logits is (p_s - p_t) / N_tokens on
// the rows with a target and 0 elsewhere; KL(p || p) = 0. Tolerance: fp32 softmax of O(1) logits,
// a few ulps of the probabilities.
TEST(Distillation, GradientAtTauOneIsStudentMinusTeacherOverTokens) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM teacher(tiny(), grid, 4, {"*"});  // named by the objective; its logits come in the rows
  const KdRows k;
  const double T = 3;
  std::vector<float> d(KdRows::N * KdRows::V);
  const ObjectiveValue v = Distillation(teacher, T).evaluate(k.logits(), d.data(), nullptr);
  EXPECT_EQ(v.tokens, 3);
  EXPECT_NEAR(v.loss, (k.kl(0) + k.kl(1) + k.kl(3)) / T, 1e-6);
  for (int64_t i = 0; i < KdRows::N * KdRows::V; ++i)
    EXPECT_NEAR(d[i], k.targets[i / KdRows::V] >= 0 ? (k.ps[i] - k.pt[i]) / T : 0.0, 1e-7) << i;
  StudentLogits same = k.logits();
  same.companion_logits = k.zs.data();
  const ObjectiveValue zero = Distillation(teacher, T).evaluate(same, d.data(), nullptr);
  EXPECT_NEAR(zero.loss, 0.0, 1e-7);
  for (float x : d) EXPECT_NEAR(x, 0.0f, 1e-7);
}

// With the LM loss kept (methods.md §3.7): loss = CE + r KD, r = CE / KD detached, so the value is
// 2 CE and d loss / d z = (p_s - onehot) / T + r (p_s - p_t) / T.
TEST(Distillation, KeepingTheLmLossRescalesKdToItsMagnitude) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM teacher(tiny(), grid, 4, {"*"});
  const KdRows k;
  const double T = 5;  // the step's tokens: more than this micro-batch's
  double ce = 0, kd = 0;
  for (int64_t n : {0, 1, 3}) ce -= k.logp[n] / T, kd += k.kl(n) / T;
  const double r = ce / kd;
  std::vector<float> d(KdRows::N * KdRows::V);
  const ObjectiveValue v = Distillation(teacher, T, {1.0f, true}).evaluate(k.logits(), d.data(), nullptr);
  EXPECT_NEAR(v.loss, 2 * ce, 1e-6);
  for (int64_t i = 0; i < KdRows::N * KdRows::V; ++i) {
    const int64_t n = i / KdRows::V, j = i % KdRows::V;
    const double want = k.targets[n] < 0 ? 0.0 : (k.ps[i] - (j == k.targets[n])) / T + r * (k.ps[i] - k.pt[i]) / T;
    EXPECT_NEAR(d[i], want, 1e-6) << i;  // r ~ O(1..10) times the fp32 error of the KL gradient
  }
}

// The hidden cosine (methods.md §3.7): KD' = KD + c COS with c = KD / COS detached, so the value
// is 2 KD and d loss / d h_s = c / T d (1 - cos(h_s, h_t)) / d h_s on the rows with a target,
// against central differences of 1 - cos in double. Tolerance: the float gradient's rounding
// (a few ulps of values of order 1 / (T |h|)).
TEST(Distillation, HiddenCosineIsRescaledToTheKlAndDifferentiatedExactly) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM teacher(tiny(), grid, 4, {"*"});
  const KdRows k;
  const int64_t W = 5;
  const auto hs = test::randn(KdRows::N * W, 21, 1.0f), ht = test::randn(KdRows::N * W, 22, 1.0f);
  StudentLogits in = k.logits();
  in.hidden = hs.data();
  in.companion_hidden = ht.data();
  in.hidden_width = in.companion_hidden_width = W;
  const double T = 3;
  auto one_minus_cos = [&](const std::vector<double>& p, int64_t n) {
    double pp = 0, tt = 0, pt = 0;
    for (int64_t i = 0; i < W; ++i) {
      pp += p[i] * p[i];
      tt += double(ht[n * W + i]) * ht[n * W + i];
      pt += p[i] * ht[n * W + i];
    }
    return 1 - pt / std::sqrt(pp * tt);
  };
  double kd = 0, cos = 0;
  for (int64_t n : {0, 1, 3}) {
    kd += k.kl(n) / T;
    cos += one_minus_cos(std::vector<double>(hs.begin() + n * W, hs.begin() + (n + 1) * W), n) / T;
  }
  std::vector<float> d(KdRows::N * KdRows::V), dh(KdRows::N * W);
  const Distillation objective(teacher, T, {1.0f, false, true});
  ASSERT_TRUE(objective.uses_hidden());
  const ObjectiveValue v = objective.evaluate(in, d.data(), dh.data());
  EXPECT_NEAR(v.loss, 2 * kd, 1e-6);
  for (int64_t n = 0; n < KdRows::N; ++n)
    for (int64_t i = 0; i < W; ++i) {
      double want = 0;
      if (k.targets[n] >= 0) {
        std::vector<double> p(hs.begin() + n * W, hs.begin() + (n + 1) * W);
        const double h = 1e-6;
        p[i] += h;
        const double up = one_minus_cos(p, n);
        p[i] -= 2 * h;
        want = kd / cos / T * (up - one_minus_cos(p, n)) / (2 * h);
      }
      EXPECT_NEAR(dh[n * W + i], want, 1e-6) << n << " " << i;
    }
}

// The student's learned projection to the teacher's width (TrainingExtras): backward from a
// gradient of the head's hidden state alone gives every parameter the directional derivative of
// F = sum a * head_hidden, against central differences (fp32 forward: the tolerance of
// test_model.cpp's whole-model checks).
TEST(Distillation, HiddenProjectionGradientsMatchFiniteDifferences) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = tiny();
  c.num_experts = 0;
  c.layer_pattern = "*-";
  c.init_std = 0.3;
  TrainingExtras extras;
  extras.hidden_projection = 24;
  DecoderLM m(c, grid, 5, {}, extras);
  ASSERT_EQ(m.head_hidden_width(), 24);
  ASSERT_NE(m.params().find("distill.projection.weight"), nullptr);
  const int64_t B = 2, S = 6, N = B * S;
  Rng rng(6, "proj");
  std::vector<int32_t> tokens(N), targets(N);
  for (int64_t i = 0; i < N; ++i) tokens[i] = static_cast<int32_t>(rng.below(31)), targets[i] = static_cast<int32_t>(rng.below(31));
  const auto a = test::randn(N * 24, 8, 1.0f);
  auto mb = m.new_micro_batch();
  auto F = [&] {
    m.mark_values_changed();
    m.forward(*mb, tokens.data(), targets.data(), B, S);
    return test::dot(m.head_hidden(*mb), a.data(), a.size());
  };
  F();
  std::vector<float> zero(static_cast<size_t>(N * m.vocab_shard()), 0.0f);
  m.params().zero_grads();
  m.backward(*mb, HeadGradient::of_logits(zero.data(), a.data()), 1.0f, 0.0f);
  int checked = 0;
  for (Param& p : m.params().params()) {
    const std::vector<float> u = test::randn(static_cast<size_t>(p.numel()), 30 + checked++);
    const std::vector<float> saved(p.value, p.value + p.numel());
    const double analytic = test::dot(p.grad, u.data(), u.size());
    const float h = 2e-3f;
    for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = saved[i] + h * u[i];
    const double up = F();
    for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = saved[i] - h * u[i];
    const double numeric = (up - F()) / (2.0 * h);
    std::memcpy(p.value, saved.data(), sizeof(float) * saved.size());
    EXPECT_NEAR(analytic, numeric, 2e-3 + 3e-2 * std::fabs(numeric)) << p.name;
  }
  m.mark_values_changed();
}

TEST(Distillation, StudentEqualToTeacherHasZeroLossAndGradient) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM student(tiny(), grid, 4), teacher(tiny(), grid, 4, {"*"});
  Rng rng(3, "kd");
  std::vector<std::vector<int32_t>> tokens(2), targets(2);
  for (int m = 0; m < 2; ++m)
    for (int64_t i = 0; i < 2 * 6; ++i) {
      tokens[m].push_back(static_cast<int32_t>(rng.below(31)));
      targets[m].push_back(i % 5 == 0 ? -1 : static_cast<int32_t>(rng.below(31)));
    }
  PipelineExecutor pipe(student, grid, 2);
  student.params().zero_grads();
  const PipelineResult r = pipe.run(tokens, targets, 2, 6, Distillation(teacher, 18.0, {2.0f}));
  EXPECT_NEAR(r.loss, 0.0, 1e-6);
  EXPECT_EQ(r.tokens, 18);  // 3 of each 12 rows masked
  double worst = 0;
  for (int64_t i = 0; i < student.params().grad_numel(); ++i)
    worst = std::max(worst, std::fabs(double(student.params().grads()[i])));
  EXPECT_LT(worst, 1e-6);  // p_s - p_t is fp32 rounding of equal logits
}

TEST(Distillation, StepsMoveTheStudentTowardsTheTeacher) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM student(tiny(), grid, 4), teacher(tiny(), grid, 9, {"*"});  // another init
  OptimizerConfig oc;
  oc.warmup_steps = 0;
  oc.lr = 1e-2;
  AdamW opt(student.params(), oc);
  PipelineExecutor pipe(student, grid, 1);
  Rng rng(5, "kd-steps");
  std::vector<std::vector<int32_t>> tokens(1), targets(1);
  for (int64_t i = 0; i < 4 * 6; ++i) {
    tokens[0].push_back(static_cast<int32_t>(rng.below(31)));
    targets[0].push_back(0);
  }
  std::vector<double> losses;
  for (int step = 0; step < 30; ++step) {
    student.params().zero_grads();
    losses.push_back(pipe.run(tokens, targets, 4, 6, Distillation(teacher, 24.0)).loss);
    opt.step(oc.lr, world, world);
    student.mark_values_changed();
  }
  EXPECT_LT(losses.back(), 0.3 * losses.front()) << losses.front() << " -> " << losses.back();
}

}  // namespace
}  // namespace ff
