// Distillation: the KL kernel against finite differences and a double-precision reference; a
// student that equals its teacher has zero loss and zero gradient; the student moves towards the
// teacher; the trainer distils from a teacher model file.
#include <gtest/gtest.h>

#include <cmath>

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

TEST(Distillation, StudentEqualToTeacherHasZeroLossAndGradient) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM student(tiny(), grid, 4), teacher(tiny(), grid, 4, {"*"});
  auto tmb = teacher.new_micro_batch();
  Rng rng(3, "kd");
  std::vector<std::vector<int32_t>> tokens(2), targets(2);
  for (int m = 0; m < 2; ++m)
    for (int64_t i = 0; i < 2 * 6; ++i) {
      tokens[m].push_back(static_cast<int32_t>(rng.below(31)));
      targets[m].push_back(i % 5 == 0 ? -1 : static_cast<int32_t>(rng.below(31)));
    }
  PipelineExecutor pipe(student, grid, 2);
  student.params().zero_grads();
  const PipelineResult r = pipe.run(tokens, targets, 2, 6, Distillation(teacher, *tmb, 18.0, 2.0f));
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
  auto tmb = teacher.new_micro_batch();
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
    losses.push_back(pipe.run(tokens, targets, 4, 6, Distillation(teacher, *tmb, 24.0, 1.0f)).loss);
    opt.step(oc.lr, world, world);
    student.mark_values_changed();
  }
  EXPECT_LT(losses.back(), 0.3 * losses.front()) << losses.front() << " -> " << losses.back();
}

}  // namespace
}  // namespace ff
