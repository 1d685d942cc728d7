// PPO under parallel layouts (specs/methods.md §6.9): advantage whitening uses the global masked
// statistics (equal under data parallelism and one process), and the actor's clipped surrogate
// (an LM head) and the critic's clipped value loss (a value head) give the loss and gradients of
// one process under DP, TP with SP, CP (each rank reads its rows' rollout data by position) and
// PP (tolerances as in test_invariance.cpp: the same sums in another order); the actor's entropy
// bonus is vocabulary-parallel under TP.
#include <gtest/gtest.h>

#include <cmath>

#include "invariance_harness.h"
#include "recipes/ppo/advantages.h"
#include "recipes/ppo/ppo_objective.h"

namespace ff {
namespace {

using namespace test;

// Rollout rows of the step's micro-batch k ([B * S]): old log-probs (or values), advantages (or
// returns), and a mask over the rows with a target from position 2 on. The old log-probs lie in
// [-3.5, -3] about the tiny model's log(1/32) = -3.47, so ratios fall on both sides of the clip
// range; the old values within 0.05 of the fresh value head's small outputs, beside a clip of 0.02.
PpoRows rollout_rows(int64_t k, const Batch& b, int64_t S, bool critic) {
  Rng rng(91, "ppo-rows", static_cast<uint64_t>(k));
  PpoRows r;
  for (size_t i = 0; i < b.targets.size(); ++i) {
    r.old.push_back(static_cast<float>(critic ? 0.05 * (2 * rng.uniform() - 1) : -3.5 + 0.5 * rng.uniform()));
    r.target.push_back(static_cast<float>(2 * rng.uniform() - 1));
    r.mask.push_back(b.targets[i] >= 0 && static_cast<int64_t>(i) % S >= 2 ? 1.0f : 0.0f);
  }
  return r;
}

TEST(Ppo, WhiteningUsesTheGlobalMaskedStatistics) {
  Communicator world = Communicator::world(), self = Communicator::self();
  const int W = world.size(), r = world.rank();
  std::vector<std::vector<float>> all, all_mask, mine, mine_mask;
  for (int k = 0; k < 2 * W; ++k) {  // two micro-batches per rank, of unequal masks
    Rng rng(5, "whiten", static_cast<uint64_t>(k));
    std::vector<float> a, m;
    for (int i = 0; i < 9 + k; ++i) {
      a.push_back(static_cast<float>(3 * rng.uniform() + k));
      m.push_back(rng.uniform() < 0.7 ? 1.0f : 0.0f);
    }
    all.push_back(a);
    all_mask.push_back(m);
    if (k / 2 == r) {
      mine.push_back(a);
      mine_mask.push_back(m);
    }
  }
  const MaskedMoments want = whiten_advantages(all, all_mask, self), got = whiten_advantages(mine, mine_mask, world);
  EXPECT_EQ(got.count, want.count);
  EXPECT_NEAR(got.mean, want.mean, 1e-12 * std::fabs(want.mean));  // the same terms summed in another order
  EXPECT_NEAR(got.variance, want.variance, 1e-12 * want.variance);
  for (int m = 0; m < 2; ++m)
    for (size_t i = 0; i < mine[static_cast<size_t>(m)].size(); ++i)
      EXPECT_NEAR(mine[static_cast<size_t>(m)][i], all[static_cast<size_t>(2 * r + m)][i], 1e-6);
}

// Both branches of the clip occur among the rows a loss saw (the last stage's ranks see them).
void expect_both_branches(const PpoLossStats& st) {
  if (st.rows == 0) return;
  EXPECT_GT(st.clipped, 0);
  EXPECT_LT(st.clipped, st.rows);
}

void expect_ppo_invariant(ModelConfig cfg, const ParallelConfig& pc, bool critic) {
  SCOPED_TRACE(strprintf("%s: tp %lld (sp %d), cp %lld, pp %lld", critic ? "critic" : "actor", (long long)pc.tp,
                         pc.sequence_parallel, (long long)pc.cp, (long long)pc.pp));
  if (critic) cfg.head = HeadKind::value;
  cfg.head_chunk_rows = 0;  // the actor's loss reads the logits of every row
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 19), ref(cfg, one, 19);
  const int64_t S = cfg.seq_len, M = 2, DP = grid.dp_size();
  auto batch = [&](int64_t k) { return micro_batch(4, k, 2, cfg); };
  std::vector<PpoRows> all_rows(static_cast<size_t>(DP * M));
  double total = 0;
  for (int64_t k = 0; k < DP * M; ++k) {
    all_rows[static_cast<size_t>(k)] = rollout_rows(k, batch(k), S, critic);
    for (float m : all_rows[static_cast<size_t>(k)].mask) total += m;
  }
  expect_one_batch_invariant(model, ref, grid, one, batch,
                             [&](PipelineExecutor& pipe, const auto& tokens, const auto& targets, int64_t B, double,
                                 bool reference) {
                               std::vector<PpoRows> rows;
                               if (reference) {  // all micro-batches side by side
                                 rows.resize(1);
                                 for (const PpoRows& r : all_rows) {
                                   rows[0].old.insert(rows[0].old.end(), r.old.begin(), r.old.end());
                                   rows[0].target.insert(rows[0].target.end(), r.target.begin(), r.target.end());
                                   rows[0].mask.insert(rows[0].mask.end(), r.mask.begin(), r.mask.end());
                                 }
                               } else {
                                 for (int64_t m = 0; m < M; ++m)
                                   rows.push_back(all_rows[static_cast<size_t>(grid.dp().rank() * M + m)]);
                               }
                               if (critic) {
                                 const PpoCriticLoss loss(rows, total, 0.02);
                                 const PipelineResult r = pipe.run(tokens, targets, B, S, loss);
                                 expect_both_branches(loss.stats());
                                 return r;
                               }
                               const PpoActorLoss loss(rows, total, 0.2, 0.05);  // with the entropy bonus
                               const PipelineResult r = pipe.run(tokens, targets, B, S, loss);
                               expect_both_branches(loss.stats());
                               return r;
                             });
}

TEST(Invariance, PpoActorAndCriticLosses) {
  for (bool critic : {false, true}) {
    expect_ppo_invariant(tiny_dense(), ParallelConfig{}, critic);  // data parallel over all ranks
    expect_ppo_invariant(tiny_dense(), tensor_layout(2, true), critic);
    ParallelConfig cp;
    cp.cp = 2;
    expect_ppo_invariant(tiny_dense(), cp, critic);
    ParallelConfig pp;
    pp.pp = 2;
    expect_ppo_invariant(tiny_dense(), pp, critic);
  }
}

}  // namespace
}  // namespace ff
