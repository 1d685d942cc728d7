// Pairwise objectives on preference pairs (specs/methods.md §6.2-6.3): token-level objectives
// (train/objective.h) over micro-batches whose sequences 2i and 2i + 1 are pair i's chosen and
// rejected responses (train/preference_data.h). Each reduces the head's rows to one number per
// sequence, complete over the CP group, and writes the gradient back to the rows.
//
// Per sequence y (its rows with a target: the response and its end):
//   DPO family  Delta_y = lp(y) - lp_ref(y), lp the sum of log p(target) over y's rows (their
//               mean with dpo_average_log_probs), lp_ref the same of the frozen reference;
//               delta = Delta_chosen - Delta_rejected, z = beta delta:
//     dpo         L = -log sigmoid(z)
//     ipo         L = (delta - 1 / (2 beta))^2
//     rpo_sq      L = (z - eta dr)^2, dr the ground-truth reward difference
//     rpo_fwd_kl  L = KL(Bern(sigmoid(eta dr)) || Bern(sigmoid(z)))
//     rpo_bwd_kl  L = KL(Bern(sigmoid(z)) || Bern(sigmoid(eta dr)))
//     + dpo_sft_weight * (-(sum of the chosen response's log-probs))
//   bradley_terry  r_y = the value head's scalar at y's last row with a target (it has read the
//               whole response); L = -log sigmoid(r_chosen - r_rejected).
// The step's loss is the mean of L over the step's pairs (every micro-batch of every DP replica):
// each micro-batch contributes its sum divided by that total, as TokenMeanCrossEntropy does with
// tokens. A pair counts when both sequences have a target.
#pragma once
#include <cstdint>
#include <vector>

#include "train/config.h"
#include "train/objective.h"

namespace ff {

// Sums over the pairs an objective evaluated (this rank's; zero off the last pipeline stage).
struct PairStats {
  double pairs = 0, correct = 0;     // correct: the chosen response scored higher
  double chosen = 0, rejected = 0;   // implicit rewards beta Delta (DPO family) or r (reward model)
  void add(const PairStats& o);
};

struct PairwiseOptions {
  Objective kind = Objective::dpo;
  double beta = 0.2, sft_weight = 0, eta = 1.0;
  bool average_log_probs = false;
  static PairwiseOptions of(const TrainConfig& tc);
};

// Whether the objective compares with ground-truth rewards (RPO).
bool uses_rewards(Objective o);

// Per sequence of one micro-batch: the sum (average: the mean) of HeadRows::value over its rows
// with a target, complete over the CP group; 0 for a sequence without targets.
std::vector<double> sequence_logps(const HeadRows& in, bool average);

// The loss of one pair and its derivative: d = delta (DPO family) or r_c - r_r (reward model);
// dr: the ground-truth reward difference (RPO).
struct PairLoss {
  double loss, dloss;  // L and dL/dd
};
PairLoss pair_loss(const PairwiseOptions& o, double d, double dr);

// Records a reference model's per-sequence log-probs of one micro-batch (loss 0, no gradient).
class ReferenceLogps : public TokenObjective {
 public:
  ReferenceLogps(std::vector<double>& out, bool average) : out_(out), average_(average) {}
  ObjectiveValue evaluate(const HeadRows& in, float* dlogp) const override;

 private:
  std::vector<double>& out_;
  bool average_;
};

class PairwiseObjective : public TokenObjective {
 public:
  // reference[m]: micro-batch m's reference log-probs per sequence (ReferenceLogps; the DPO
  // family); rewards[m]: its ground-truth reward per sequence (RPO). Either may be null when the
  // objective does not use it. Micro-batch m is HeadRows::micro_batch.
  PairwiseObjective(const PairwiseOptions& o, double total_pairs, const std::vector<std::vector<double>>* reference,
                    const std::vector<std::vector<float>>* rewards);
  ObjectiveValue evaluate(const HeadRows& in, float* dlogp) const override;
  const PairStats& stats() const { return stats_; }

 private:
  PairwiseOptions o_;
  double total_;
  const std::vector<std::vector<double>>* reference_;
  const std::vector<std::vector<float>>* rewards_;
  mutable PairStats stats_;
};

// Pairs of one micro-batch's targets ([B*S], sequences 2i, 2i + 1) whose two sequences both have a
// target; over a step's micro-batches, summed over the data-parallel group (collective over dp).
int64_t count_pairs(const std::vector<int32_t>& targets, int64_t S);
int64_t step_pair_count(const std::vector<std::vector<int32_t>>& targets, int64_t S, const Communicator& dp);

}  // namespace ff
