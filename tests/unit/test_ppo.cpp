// PPO's math (specs/methods.md §6.4, the tests of §6.9): GAE against a hand-computed 3-step
// example and, with lambda = gamma = 1, reward-to-go minus values; the KL-penalised rewards;
// the actor loss at ratio 1 is -mean(A) with gradient -A / T; clipping stops the gradient outside
// [1 - eps, 1 + eps] in the advantage's favourable direction only; the critic's clipped loss;
// masked rows contribute nothing; whitening gives zero mean and unit variance over the mask.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "recipes/ppo/advantages.h"
#include "recipes/ppo/ppo_objective.h"
#include "recipes/ppo/rollout_share.h"
#include "recipes/ppo/rollouts.h"
#include "test_util.h"

namespace ff {
namespace {

TEST(Ppo, GaeMatchesAHandComputedThreeStepExample) {
  // Rows 0..4 of one sequence; the response is rows [1, 4): three steps.
  const float rewards[5] = {9, 0.5f, -0.25f, 1.0f, 9}, values[5] = {9, 0.2f, 0.4f, 0.8f, 9};
  float adv[5], ret[5];
  generalized_advantages(adv, ret, rewards, values, {1, 4}, 5, 1.0, 0.95);
  // Backwards from the end (V after the response = 0), gamma 1, lambda 0.95:
  //   row 3: delta = 1.0 - 0.8 = 0.2;             A = 0.2
  //   row 2: delta = -0.25 + 0.8 - 0.4 = 0.15;    A = 0.15 + 0.95 * 0.2 = 0.34
  //   row 1: delta = 0.5 + 0.4 - 0.2 = 0.7;       A = 0.7 + 0.95 * 0.34 = 1.023
  const float want[5] = {0, 1.023f, 0.34f, 0.2f, 0};
  for (int t = 0; t < 5; ++t) {
    EXPECT_NEAR(adv[t], want[t], 1e-6) << t;
    EXPECT_NEAR(ret[t], t >= 1 && t < 4 ? want[t] + values[t] : 0.0f, 1e-6) << t;
  }
}

TEST(Ppo, GaeWithLambdaAndGammaOneIsRewardToGoMinusValue) {
  const int64_t S = 7;
  const float rewards[S] = {0, 0.3f, -0.1f, 0.7f, 0.2f, -0.4f, 0}, values[S] = {0, 0.5f, 0.1f, -0.2f, 0.9f, 0.3f, 0};
  float adv[S], ret[S];
  generalized_advantages(adv, ret, rewards, values, {1, 6}, S, 1.0, 1.0);
  for (int64_t t = 1; t < 6; ++t) {
    const double to_go = std::accumulate(rewards + t, rewards + 6, 0.0);
    EXPECT_NEAR(adv[t], to_go - values[t], 1e-6) << t;
    EXPECT_NEAR(ret[t], to_go, 1e-6) << t;  // the returns are the reward-to-go
  }
}

TEST(Ppo, RewardsPenaliseTheKlPerTokenAndAddTheScoreAtTheEnd) {
  const float logp[5] = {0, -1.0f, -2.0f, -0.5f, 0}, ref[5] = {0, -1.5f, -1.0f, -0.5f, 0};
  float r[5];
  kl_penalized_rewards(r, logp, ref, {1, 4}, 5, 2.0, 0.1, true);
  const float want[5] = {0, -0.05f, -0.1f, 2.0f, 0};  // |0.5|, |-1|, 0 times -0.1; score 2 at row 3
  for (int t = 0; t < 5; ++t) EXPECT_NEAR(r[t], want[t], 1e-7) << t;
  kl_penalized_rewards(r, logp, ref, {1, 4}, 5, 2.0, 0.1, false);
  EXPECT_NEAR(r[2], 0.1f, 1e-7);  // the signed estimate: -0.1 (-2 - -1)
}

// One micro-batch of two sequences of S = 4 rows, all rows with a target.
struct Rollout {
  static constexpr int64_t B = 2, S = 4;
  std::vector<float> value = std::vector<float>(B * S);
  std::vector<int32_t> targets = std::vector<int32_t>(B * S, 1), positions;
  std::vector<PpoRows> rows = std::vector<PpoRows>(1);
  Rollout() {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) positions.push_back(static_cast<int32_t>(s));
    rows[0].old.assign(B * S, -1.0f);
    rows[0].target = {0, 1.0f, -2.0f, 0.5f, 0, 3.0f, -1.0f, 0};
    rows[0].mask = {0, 1, 1, 1, 0, 1, 1, 0};
  }
  HeadRows head() const { return HeadRows{value.data(), targets.data(), positions.data(), B, S, nullptr}; }
};

// The actor's side of a rollout: random logits over V = 5, each row's log-prob of its target
// (Rollout::value) and log-sum-exp from them, in double, as the LM head gives them.
struct ActorLogits {
  static constexpr int64_t V = 5;
  std::vector<float> z, lse;
  explicit ActorLogits(Rollout& r, uint64_t seed = 3) : z(test::randn(Rollout::B * Rollout::S * V, seed, 1.0f)) {
    for (int64_t n = 0; n < Rollout::B * Rollout::S; ++n) {
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(z[n * V + v]));
      lse.push_back(static_cast<float>(std::log(s)));
      r.value[n] = z[n * V + r.targets[n]] - lse[n];
    }
  }
  StudentLogits in(const Rollout& r) const {
    StudentLogits s;
    s.logits = z.data();
    s.lse = lse.data();
    s.rows = r.head();
    s.Vl = V;
    return s;
  }
  double p(int64_t n, int64_t v) const { return std::exp(double(z[n * V + v]) - lse[n]); }
  // The surrogate's d L / d logp of row n, read off the target's logit gradient:
  // d L / d z_t = d L / d logp (1 - p_t) when there is no entropy term.
  double dlogp(const std::vector<float>& dz, const Rollout& r, int64_t n) const {
    return dz[n * V + r.targets[n]] / (1 - p(n, r.targets[n]));
  }
};

TEST(Ppo, RatioOneGivesMinusTheMeanAdvantageAndMaskedRowsNothing) {
  Rollout r;
  const ActorLogits a(r);
  r.rows[0].old = r.value;  // logp = logp_old: rho = 1
  const double T = 5;
  std::vector<float> d(r.value.size() * ActorLogits::V);
  const PpoActorLoss actor(r.rows, T, 0.2);
  const ObjectiveValue v = actor.evaluate(a.in(r), d.data(), nullptr);
  EXPECT_EQ(v.tokens, 5);
  EXPECT_NEAR(v.loss, -(1.0 - 2.0 + 0.5 + 3.0 - 1.0) / T, 1e-12);
  for (int64_t n = 0; n < Rollout::B * Rollout::S; ++n) {
    EXPECT_NEAR(a.dlogp(d, r, n), r.rows[0].mask[n] > 0 ? -r.rows[0].target[n] / T : 0.0, 1e-6) << n;
    if (r.rows[0].mask[n] == 0) {  // a masked row's logits get nothing at all
      for (int64_t v = 0; v < ActorLogits::V; ++v) EXPECT_EQ(d[n * ActorLogits::V + v], 0.0f);
    }
  }
  EXPECT_EQ(actor.stats().clipped, 0);
}

TEST(Ppo, ClippingStopsTheGradientOnlyInTheFavourableDirection) {
  Rollout r;
  const ActorLogits a(r);
  // rows 1 (A = 1 > 0), 2 (A = -2 < 0) at rho = 1.3; rows 5 (A = 3 > 0), 6 (A = -1 < 0) at rho = 0.7.
  const double rho[8] = {1, 1.3, 1.3, 1, 1, 0.7, 0.7, 1};
  for (int n = 0; n < 8; ++n) r.rows[0].old[n] = static_cast<float>(r.value[n] - std::log(rho[n]));
  std::vector<float> d(r.value.size() * ActorLogits::V);
  const PpoActorLoss actor(r.rows, 5, 0.2);
  const ObjectiveValue v = actor.evaluate(a.in(r), d.data(), nullptr);
  // Tolerances: rho reaches the loss through fp32 log-probs (a few ulps, about 1e-7 relative).
  EXPECT_EQ(a.dlogp(d, r, 1), 0.0);               // A > 0, rho > 1 + eps: no more push up
  EXPECT_NEAR(a.dlogp(d, r, 2), 2.0 * 1.3 / 5, 1e-5);   // A < 0, rho > 1 + eps: pulled back down
  EXPECT_NEAR(a.dlogp(d, r, 5), -3.0 * 0.7 / 5, 1e-5);  // A > 0, rho < 1 - eps: pushed back up
  EXPECT_EQ(a.dlogp(d, r, 6), 0.0);               // A < 0, rho < 1 - eps: no more push down
  EXPECT_NEAR(a.dlogp(d, r, 3), -0.5 / 5, 1e-6);  // rho = 1
  EXPECT_EQ(actor.stats().clipped, 2);
  // max(-A rho, -A clip(rho)) per row: -1.2, 2.6, -0.5, -2.1, 0.8 (rows 1, 2, 3, 5, 6).
  EXPECT_NEAR(v.loss, (-1.2 + 2.6 - 0.5 - 2.1 + 0.8) / 5, 1e-6);
}

// The entropy bonus -c H: with zero advantages it is the whole loss, -c / T sum_masked H, whose
// gradient matches central differences in double. Tolerance: the gradient is computed from fp32
// logits and log-sum-exps (relative 1e-6 of terms of order c p / T).
TEST(Ppo, EntropyBonusMatchesFiniteDifferences) {
  Rollout r;
  r.rows[0].target.assign(r.rows[0].target.size(), 0.0f);  // A = 0: no surrogate
  const ActorLogits a(r, 7);
  r.rows[0].old = r.value;
  const double T = 5, c = 0.3;
  auto entropy_loss = [&](const std::vector<float>& z) {  // -c / T sum over masked rows of H, in double
    double sum = 0;
    for (int64_t n = 0; n < Rollout::B * Rollout::S; ++n) {
      if (r.rows[0].mask[n] == 0) continue;
      double mx = -1e30, s = 0, h = 0;
      for (int64_t v = 0; v < ActorLogits::V; ++v) mx = std::max(mx, double(z[n * ActorLogits::V + v]));
      for (int64_t v = 0; v < ActorLogits::V; ++v) s += std::exp(z[n * ActorLogits::V + v] - mx);
      for (int64_t v = 0; v < ActorLogits::V; ++v) {
        const double lp = z[n * ActorLogits::V + v] - mx - std::log(s);
        h -= std::exp(lp) * lp;
      }
      sum += h;
    }
    return -c / T * sum;
  };
  std::vector<float> d(r.value.size() * ActorLogits::V);
  const PpoActorLoss actor(r.rows, T, 0.2, c);
  const ObjectiveValue v = actor.evaluate(a.in(r), d.data(), nullptr);
  EXPECT_NEAR(v.loss, entropy_loss(a.z), 1e-6);
  EXPECT_NEAR(actor.stats().entropy, -entropy_loss(a.z) * T / c, 1e-5);
  for (size_t i = 0; i < a.z.size(); ++i) {
    std::vector<float> z = a.z;
    z[i] = a.z[i] + 1e-3f;
    const double up = entropy_loss(z), hi = z[i];
    z[i] = a.z[i] - 1e-3f;
    EXPECT_NEAR(d[i], (up - entropy_loss(z)) / (hi - z[i]), 1e-5) << i;  // the steps as rounded to fp32
  }
}

TEST(Ppo, CriticLossClipsTheValueMove) {
  Rollout r;
  r.rows[0].old = {0, 0.0f, 0.0f, 0.0f, 0, 0.0f, 0.0f, 0};
  r.rows[0].target = {0, 1.0f, 1.0f, -1.0f, 0, 0.1f, 0.0f, 0};  // returns
  r.rows[0].mask = {0, 1, 1, 1, 0, 1, 1, 0};
  // Row 1: V = 0.5 moves away by more than 0.2 toward G = 1: clipped (0.2 - 1)^2 > (0.5 - 1)^2, stopped.
  // Row 2: V = 0.1 within the clip: unclipped, dV = (0.1 - 1) / T.
  // Row 3: V = 0.5, G = -1, moved the wrong way past the clip: unclipped (1.5^2) > clipped (1.2^2).
  // Row 5: V = -0.3 past the clip toward nothing: (-0.3 - 0.1)^2 = 0.16 > (-0.2 - 0.1)^2 = 0.09: unclipped.
  // Row 6: V = 0.3, G = 0: unclipped 0.09 > clipped 0.04.
  r.value = {0, 0.5f, 0.1f, 0.5f, 0, -0.3f, 0.3f, 0};
  std::vector<float> d(r.value.size());
  const double T = 5;
  const PpoCriticLoss critic(r.rows, T, 0.2);
  const ObjectiveValue v = critic.evaluate(r.head(), d.data());
  EXPECT_EQ(d[1], 0.0f);
  EXPECT_NEAR(d[2], (0.1 - 1.0) / T, 1e-7);
  EXPECT_NEAR(d[3], (0.5 + 1.0) / T, 1e-7);
  EXPECT_NEAR(d[5], (-0.3 - 0.1) / T, 1e-7);
  EXPECT_NEAR(d[6], 0.3 / T, 1e-7);
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_NEAR(v.loss, 0.5 * (0.64 + 0.81 + 2.25 + 0.16 + 0.09) / T, 1e-6);
  EXPECT_EQ(critic.stats().clipped, 1);
}

TEST(Ppo, WhiteningGivesZeroMeanAndUnitVarianceOverTheMask) {
  std::vector<std::vector<float>> adv = {{1, 2, 100}, {3, 4}}, mask = {{1, 1, 0}, {1, 1}};
  Communicator self = Communicator::self();
  const MaskedMoments m = whiten_advantages(adv, mask, self);
  EXPECT_DOUBLE_EQ(m.mean, 2.5);
  EXPECT_DOUBLE_EQ(m.variance, 1.25);  // population variance of 1, 2, 3, 4
  EXPECT_EQ(adv[0][2], 100.0f);        // unmasked: untouched
  const double s = std::sqrt(1.25 + 1e-8);
  EXPECT_NEAR(adv[0][0], -1.5 / s, 1e-6);
  EXPECT_NEAR(adv[1][1], 1.5 / s, 1e-6);
}

}  // namespace
}  // namespace ff

namespace ff {
namespace {

// Rollouts as micro-batches: prompt + response (+ EOS when it ended) padded to S, targets on the
// response rows [P - 1, L - 1) only.
TEST(Ppo, RolloutsTargetTheResponseRowsOnly) {
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7}, {8}};
  std::vector<Generated> gen(2);
  gen[0].tokens = {1, 2};
  gen[0].finish = "eos";
  gen[1].tokens = {3, 4, 9};
  gen[1].finish = "length";
  const Rollouts r = pack_rollouts(prompts, gen, {0, 1}, 2, 7, /*eod=*/0);
  ASSERT_EQ(r.micro_batches(), 1);
  EXPECT_EQ(r.tokens[0], (std::vector<int32_t>{5, 6, 7, 1, 2, 0, 0, /**/ 8, 3, 4, 9, 0, 0, 0}));
  EXPECT_EQ(r.targets[0], (std::vector<int32_t>{-1, -1, 1, 2, 0, -1, -1, /**/ 3, 4, 9, -1, -1, -1, -1}));
  EXPECT_EQ(r.spans[0][0].first, 2);
  EXPECT_EQ(r.spans[0][0].end, 5);  // L = 6 with the EOS
  EXPECT_EQ(r.spans[0][1].first, 0);
  EXPECT_EQ(r.spans[0][1].end, 3);  // no EOS: the last token has no row after it
  EXPECT_EQ(r.ended[0], (std::vector<uint8_t>{1, 0}));
  gen[0].tokens = {1, 2, 3, 4};
  EXPECT_THROW(pack_rollouts(prompts, gen, {0, 1}, 2, 7, 0), Error);  // 3 + 4 + EOS > 7
  // Each optimizer step's sequences are split over the replicas: 2 replicas of 2 per step.
  EXPECT_EQ(replica_sequences(8, 2, 1, 2), (std::vector<int64_t>{2, 3, 6, 7}));
}

// A group's loss rows come from the batch-wide scores at each packed sequence's own index: a
// share holding sequences 2 and 0 (in that order) reads their rows, the reward model's score
// enters at the last response row, and only_ended masks the actor off the cut sequence.
TEST(Ppo, LossRowsReadEachSequencesScoresByItsBatchIndex) {
  const int64_t S = 6;
  const std::vector<std::vector<int32_t>> prompts = {{5, 6}, {7}, {8, 9}};
  std::vector<Generated> gen(3);
  gen[0].tokens = {1, 2};
  gen[0].finish = "eos";  // rows [1, 4)
  gen[2].tokens = {3};
  gen[2].finish = "length";  // rows [1, 2)
  SideRollouts share;
  share.append(pack_rollouts(prompts, gen, {2, 0}, 2, S, /*eod=*/0), {2, 0});
  RolloutScores sc;
  sc.reset(3, S);
  for (int64_t i = 0; i < 3 * S; ++i) {
    sc.logp[static_cast<size_t>(i)] = -0.1f * static_cast<float>(i);
    sc.ref[static_cast<size_t>(i)] = -0.1f * static_cast<float>(i) + 0.05f;
    sc.values[static_cast<size_t>(i)] = 0.01f * static_cast<float>(i);
  }
  sc.score = {1.0f, 9.0f, 2.0f};
  TrainConfig tc;
  tc.ppo_kl_beta = 0.5;
  tc.ppo_gamma = 0.9;
  tc.ppo_lambda = 0.8;
  tc.ppo_only_ended = true;
  const LossRows rows = loss_rows(share, sc, tc);
  ASSERT_EQ(rows.adv.size(), 1u);
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t i = b == 0 ? 2 : 0;  // the batch index of packed sequence b
    const ResponseSpan sp = share.ro.spans[0][static_cast<size_t>(b)];
    std::vector<float> rewards(S), adv(S), ret(S);
    kl_penalized_rewards(rewards.data(), sc.logp.data() + i * S, sc.ref.data() + i * S, sp, S,
                         sc.score[static_cast<size_t>(i)], 0.5, true);
    generalized_advantages(adv.data(), ret.data(), rewards.data(), sc.values.data() + i * S, sp, S, 0.9, 0.8);
    for (int64_t t = 0; t < S; ++t) {
      const size_t at = static_cast<size_t>(b * S + t);
      const bool response = t >= sp.first && t < sp.end;
      EXPECT_EQ(rows.logp[0][at], sc.logp[static_cast<size_t>(i * S + t)]) << b << " " << t;
      EXPECT_EQ(rows.values[0][at], sc.values[static_cast<size_t>(i * S + t)]) << b << " " << t;
      EXPECT_EQ(rows.adv[0][at], adv[static_cast<size_t>(t)]) << b << " " << t;
      EXPECT_EQ(rows.ret[0][at], ret[static_cast<size_t>(t)]) << b << " " << t;
      EXPECT_EQ(rows.mask[0][at], response ? 1.0f : 0.0f) << b << " " << t;
      EXPECT_EQ(rows.actor_mask[0][at], response && i == 0 ? 1.0f : 0.0f) << b << " " << t;  // 2 was cut
    }
  }
  EXPECT_NE(rows.adv[0][1], 0.0f);  // sequence 2's one response row carries its score 2
}

}  // namespace
}  // namespace ff
