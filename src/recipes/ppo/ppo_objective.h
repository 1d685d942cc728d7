// PPO's two losses (specs/methods.md §6.4 steps 4-5) as token-level objectives (train/objective.h)
// over rollout micro-batches. Per-row inputs are laid out [B * S] per micro-batch as the trainer's
// tokens are (row t of a sequence: its token t + 1); under context parallelism each rank reads
// the rows it holds through HeadRows::positions. A row counts where its mask is > 0 (the actor's:
// response rows of sequences that ended; the critic's: response rows).
//
//   actor   rho = exp(logp - logp_old)
//           L = 1/T sum_masked [max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) - c H]
//           dL/dlogp = -A rho / T where the unclipped term is the larger one, else 0: outside
//           [1 - eps, 1 + eps] in the advantage's favourable direction the gradient stops.
//           H = -sum_v p_v log p_v over the whole vocabulary (the entropy bonus, c >= 0; its
//           mean is reported whatever c): dH/dz_v = -p_v (log p_v + H). The actor's loss reads
//           the logits (a distribution objective), vocabulary-parallel under TP.
//   critic  V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
//           L = 1/(2T) sum_masked max((V - G)^2, (V_clip - G)^2),  dL/dV = (V - G) / T where the
//           unclipped term is the larger one, else 0.
// T: the masked rows of the whole step (every micro-batch of every data-parallel replica), so the
// loss is the step's masked mean.
#pragma once
#include <cstdint>
#include <vector>

#include "train/objective.h"

namespace ff {

// One rollout micro-batch's per-row inputs, [B * S] each.
struct PpoRows {
  std::vector<float> old;     // actor: logp at rollout time; critic: values at rollout time
  std::vector<float> target;  // actor: advantages A (whitened); critic: returns G
  std::vector<float> mask;
};

// What a loss saw over the micro-batches it evaluated (this rank's rows; CP-complete).
struct PpoLossStats {
  double rows = 0;     // masked rows
  double clipped = 0;  // rows where the clipped term was the larger (its gradient stopped)
  double ratio = 0;    // actor: sum of rho; critic: sum of V - V_old
  double entropy = 0;  // actor: sum of H
  void add(const PpoLossStats& o);
};

class PpoActorLoss : public LogitObjective {
 public:
  // rows[m]: micro-batch m's (HeadRows::micro_batch). total_rows: T. entropy_coeff: c.
  PpoActorLoss(const std::vector<PpoRows>& rows, double total_rows, double clip_eps, double entropy_coeff = 0);
  ObjectiveValue evaluate(const StudentLogits& in, float* dlogits, float* dhidden) const override;
  const PpoLossStats& stats() const { return stats_; }

 private:
  const std::vector<PpoRows>& rows_;
  double total_, eps_, entropy_;
  mutable PpoLossStats stats_;
};

class PpoCriticLoss : public TokenObjective {
 public:
  PpoCriticLoss(const std::vector<PpoRows>& rows, double total_rows, double value_clip);
  ObjectiveValue evaluate(const HeadRows& in, float* dvalue) const override;
  const PpoLossStats& stats() const { return stats_; }

 private:
  const std::vector<PpoRows>& rows_;
  double total_, clip_;
  mutable PpoLossStats stats_;
};

}  // namespace ff
