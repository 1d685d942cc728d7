// A rank group's share of a PPO iteration's rollouts (recipes/ppo/ppo.h): the sequences it packed
// as micro-batches, and the rows its losses read, taken from every sequence's scores
// (RolloutScores, recipes/ppo/ppo_placement.h) with the KL-penalised rewards and GAE
// (recipes/ppo/advantages.h).
#pragma once
#include <cstdint>
#include <vector>

#include "recipes/ppo/ppo_objective.h"
#include "recipes/ppo/ppo_placement.h"
#include "recipes/ppo/rollouts.h"
#include "train/config.h"

namespace ff {

// One group's share of the rollout batch: the batch's index of each sequence it packed, in order,
// and those sequences as micro-batches.
struct SideRollouts {
  std::vector<int64_t> which;
  Rollouts ro;
  void append(Rollouts part, const std::vector<int64_t>& indices);
};

// A group's per-micro-batch rows for its losses, from every sequence's scores: the rollout-time
// log-probs and values, GAE's advantages and returns, the response mask and the actor's.
struct LossRows {
  std::vector<std::vector<float>> logp, values, adv, ret, mask, actor_mask;
};
LossRows loss_rows(const SideRollouts& side, const RolloutScores& sc, const TrainConfig& tc);

// Optimizer step j's micro-batches [j GA, (j + 1) GA) of a share: their tokens and targets, each
// one's loss rows (old, target, mask: a model's three arrays of LossRows), and the step's masked
// rows on this rank.
struct StepBatch {
  std::vector<std::vector<int32_t>> tokens, targets;
  std::vector<PpoRows> rows;
  double masked = 0;
};
StepBatch step_batch(const SideRollouts& side, int64_t j, int64_t GA, const std::vector<std::vector<float>>& old,
                     const std::vector<std::vector<float>>& target, const std::vector<std::vector<float>>& mask);

}  // namespace ff
