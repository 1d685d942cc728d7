// MoE router math (specs/parallelism-and-moe.md §6): scores, top-k selection, gating probs,
// load-balancing aux loss, z-loss, and their backward. All fp32.
// Legend: N tokens, E experts, K = top-k. Routing is held sparsely: topk_idx[N, K] (expert ids,
// distinct within a row) and topk_probs[N, K] (the gating weight of each selected expert).
#pragma once
#include <cstdint>

namespace ff::cpu {

enum class RouterScore : uint8_t { softmax, sigmoid };

struct RouterOptions {
  int64_t num_experts = 0;  // E
  int64_t top_k = 0;        // K, 1 <= K <= E
  RouterScore score = RouterScore::softmax;
  // softmax only: false = top-k of the raw logits, then softmax over the K selected (Mixtral);
  // true = softmax over all E, then top-k of the scores (Qwen2-MoE, DeepSeek).
  bool pre_softmax = false;
  // Renormalise the K selected probs to sum 1 (pre-softmax and sigmoid paths):
  //   p_j = s_j / (sum_selected s + 1e-20).
  bool norm_topk_prob = false;
  float topk_scaling_factor = 1.0f;  // probs *= this, after everything else
};

// Forward. scores[N, E] is saved for backward: softmax(logits) (pre-softmax), sigmoid(logits)
// (sigmoid), or unused (plain softmax path, may be null there). expert_bias[E] (nullable) is
// added to the scores for SELECTION only (aux-loss-free balancing; sigmoid scores). Ties in
// top-k go to the lower expert id. topk_idx rows are in descending selection-score order.
void router_topk_forward(int32_t* topk_idx, float* topk_probs, float* scores, const float* logits,
                         const float* expert_bias, int64_t N, const RouterOptions& opt);
// dlogits[N, E] OVERWRITTEN with the gradient of sum(dtopk_probs * topk_probs) through the
// gating function; unselected experts get gradient only through normalisations that touch them
// (pre-softmax), never through the discrete selection.
void router_topk_backward(float* dlogits, const float* dtopk_probs, const int32_t* topk_idx,
                          const float* topk_probs, const float* scores, const float* logits,
                          int64_t N, const RouterOptions& opt);

// Aux-loss scores (§6.2): s = softmax(logits) over E (softmax score), or sigmoid(logits) /
// (row sum + 1e-20) (sigmoid score). counts[E] += the number of tokens whose own top-K of s
// (no bias, before any dropping) includes expert e.
void aux_loss_scores(float* s, int64_t* counts, const float* logits, int64_t N,
                     const RouterOptions& opt);
// Micro-batch (Switch/GShard) load-balancing loss (§6.3) over local rows with globally reduced
// counts: L = coeff * E / (K * T^2) * sum_e counts[e] * sum_{n<N} s[n, e], T = total_tokens.
double aux_loss_value(const float* s, const int64_t* counts, int64_t N, int64_t total_tokens,
                      float coeff, const RouterOptions& opt);
// dlogits[N, E] += grad_scale * dL/dlogits, with dL/ds[n,e] = coeff*E*counts[e]/(K*T^2) and s
// back-propagated through its softmax / normalised sigmoid. Counts are constants.
void aux_loss_backward(float* dlogits, const float* s, const int64_t* counts, const float* logits,
                       int64_t N, int64_t total_tokens, float coeff, float grad_scale,
                       const RouterOptions& opt);

// z-loss (§6.5): L = coeff * mean_n lse(logits[n])^2. lse[N] saved.
double z_loss_forward(float* lse, const float* logits, int64_t N, int64_t E, float coeff);
// dlogits += grad_scale * coeff * (2/N) * lse[n] * softmax(logits[n])_e.
void z_loss_backward(float* dlogits, const float* logits, const float* lse, int64_t N, int64_t E,
                     float coeff, float grad_scale);

}  // namespace ff::cpu
