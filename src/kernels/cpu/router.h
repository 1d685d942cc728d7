// MoE router math (specs/parallelism-and-moe.md §6): scores, top-k selection (optionally
// group-limited), gating probs, z-loss, and their backward. All fp32. The load-balancing losses
// are in kernels/cpu/aux_loss.h.
// Legend: N tokens, E experts, K = top-k, G expert groups, M groups per token. Routing is held
// sparsely: topk_idx[N, K] (expert ids, distinct within a row) and topk_probs[N, K] (the gating
// weight of each selected expert).
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
  // Group-limited routing (DeepSeek-V2 device-limited, DeepSeek-V3 node-limited; §6.1): the E
  // experts form G = num_groups contiguous groups of E / G (group g: experts [g E/G, (g+1) E/G)).
  // Each token scores every group by the sum of its top K / M selection values in the group,
  // keeps its M = group_topk best groups and takes its top-K experts among theirs only.
  // num_groups = 0: no groups (every expert is eligible).
  int64_t num_groups = 0;
  int64_t group_topk = 0;
  bool grouped() const { return num_groups > 0; }
};

// Forward. scores[N, E] is saved for backward: softmax(logits) (pre-softmax), sigmoid(logits)
// (sigmoid), or unused (plain softmax path, may be null there). expert_bias[E] (nullable) is
// added to the scores for SELECTION only (aux-loss-free balancing; sigmoid scores). The
// selection values v are the logits (plain softmax), the scores (pre-softmax) or scores + bias
// (sigmoid); with groups, the group scores are sums of v and the probs still come from the
// unbiased scores. Ties in top-k (of groups and of experts) go to the lower id. topk_idx rows are
// in descending selection-value order.
void router_topk_forward(int32_t* topk_idx, float* topk_probs, float* scores, const float* logits,
                         const float* expert_bias, int64_t N, const RouterOptions& opt);
// dlogits[N, E] OVERWRITTEN with the gradient of sum(dtopk_probs * topk_probs) through the
// gating function; unselected experts get gradient only through normalisations that touch them
// (pre-softmax), never through the discrete selection.
void router_topk_backward(float* dlogits, const float* dtopk_probs, const int32_t* topk_idx,
                          const float* topk_probs, const float* scores, const float* logits,
                          int64_t N, const RouterOptions& opt);

// z-loss (§6.5): L = coeff * mean_n lse(logits[n])^2. lse[N] saved.
double z_loss_forward(float* lse, const float* logits, int64_t N, int64_t E, float coeff);
// dlogits += grad_scale * coeff * (2/N) * lse[n] * softmax(logits[n])_e.
void z_loss_backward(float* dlogits, const float* logits, const float* lse, int64_t N, int64_t E,
                     float coeff, float grad_scale);

}  // namespace ff::cpu
