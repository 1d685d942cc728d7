// PPO's rewards and advantages (specs/methods.md §6.4 steps 2-3), on rollouts laid out as the
// trainer's micro-batches: per micro-batch, [B * S] rows, row t of a sequence holding the
// log-prob (and value) of its token t + 1. A sequence's response rows are [first, end): first =
// prompt length - 1 (the row that predicts the first response token), end = its length - 1.
//
//   k_t = |logp_t - logp_ref_t| (or logp_t - logp_ref_t without use_absolute_kl)
//   R_t = -beta k_t, plus the reward model's score r at the last response row (end - 1)
//   delta_t = R_t + gamma V_{t+1} - V_t   (V_end = 0: nothing follows the response)
//   A_t = delta_t + gamma lambda A_{t+1}  (A_end = 0),   G_t = A_t + V_t (the critic's returns)
//
// Advantages are then whitened with the mean and variance over every response row of the step on
// every data-parallel replica: A <- (A - mean) / sqrt(var + 1e-8), var the population variance.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/comm.h"

namespace ff {

// One sequence's response rows.
struct ResponseSpan {
  int64_t first = 0, end = 0;  // rows [first, end); empty when first >= end
};

// R_t of one sequence's response rows (rows outside the span get 0). logp, logp_ref, rewards:
// the sequence's [S] rows.
void kl_penalized_rewards(float* rewards, const float* logp, const float* logp_ref, ResponseSpan span, int64_t S,
                          double score, double beta, bool absolute_kl);

// Generalised advantage estimation over one sequence's response rows: adv and returns [S] (0
// outside the span), from rewards and values [S].
void generalized_advantages(float* adv, float* returns, const float* rewards, const float* values, ResponseSpan span,
                            int64_t S, double gamma, double lambda);

// The masked mean and population variance over all micro-batches' rows where mask > 0, summed
// over `dp` (every replica gets the same), then every masked entry of adv whitened in place.
struct MaskedMoments {
  double mean = 0, variance = 0, count = 0;
};
MaskedMoments whiten_advantages(std::vector<std::vector<float>>& adv, const std::vector<std::vector<float>>& mask,
                                const Communicator& dp);

}  // namespace ff
