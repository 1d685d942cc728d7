// Where PPO's four models run (recipes/ppo/ppo.h, DESIGN decision 14) and what passes between them.
//
// Shared (train.ppo_critic_ranks = 0): every rank holds all four models on one grid, the job's
// layout (parallel.*).
// Split (train.ppo_critic_ranks = N > 0): the first W - N ranks of the world are the actor's
// group (actor and reference, on a grid of parallel.*), the last N the critic's group (critic and
// reward model, on a grid of RunConfig::ppo_critic_layout()). What one group computes and the
// other needs goes over a bridge, the actor group's first rank and every rank of the critic's:
//   actor -> critic  each chunk of rollouts as soon as it is generated (the critic scores it
//                    while the actor generates the next), then the actor's and the reference's
//                    log-probs of every response row;
//   critic -> actor  the critic's values of every response row and the reward model's scores;
// the actor's first rank then broadcasts within its group. Both groups end each iteration with
// every sequence's rows, compute the same rewards and advantages, and train their own model
// concurrently.
#pragma once
#include <memory>
#include <vector>

#include "parallel/grid.h"
#include "train/config.h"
#include "train/generation.h"

namespace ff {

// Every sequence of an iteration's rollout batch, [R * S] rows each (row t predicts token t + 1;
// 0 off the response), and the reward model's score per sequence [R].
struct RolloutScores {
  std::vector<float> logp, ref, values, score;
  void reset(int64_t R, int64_t S);
};

class PpoPlacement {
 public:
  // Collective over world.
  PpoPlacement(const RunConfig& cfg, const Communicator& world);
  PpoPlacement(const PpoPlacement&) = delete;
  PpoPlacement& operator=(const PpoPlacement&) = delete;

  bool split() const { return split_; }
  bool actor_side() const { return actor_side_; }    // this rank holds the actor and the reference
  bool critic_side() const { return critic_side_; }  // this rank holds the critic and the reward model
  const ParallelGrid& grid() const { return *grid_; }  // this rank's group (the world when shared)
  const Communicator& world() const { return world_; }
  // The data-parallel size of each group, known on every rank.
  int64_t actor_dp() const { return actor_dp_; }
  int64_t critic_dp() const { return critic_dp_; }

  // Split: the generated responses of sequences [first, first + count) of the batch, complete on
  // the actor's ranks, reach every critic rank (nothing to do when shared).
  void share_rollouts(std::vector<Generated>& generated, int64_t first, int64_t count) const;
  // Each group's ranks filled their rows (the actor side logp and ref, the critic side values and
  // score; zeros elsewhere, every row filled on exactly one rank of its group); afterwards every
  // rank of the job holds all of them.
  void complete_scores(RolloutScores& s) const;

 private:
  const Communicator& world_;
  bool split_ = false, actor_side_ = true, critic_side_ = true;
  Communicator group_, bridge_;  // split: this rank's group; the actor's first rank + the critic's ranks
  std::unique_ptr<ParallelGrid> grid_;
  int64_t actor_dp_ = 1, critic_dp_ = 1;
};

}  // namespace ff
