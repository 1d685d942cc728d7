// Vocabulary-parallel softmax cross-entropy (specs/parallelism-and-moe.md §2): each TP rank holds
// the logits of the vocabulary ids [v0, v0 + Vl) for every row. Three all-reduces over TP give
// the row max (MAX), the sum of exp(logit - max) (SUM) and the target's logit (SUM; only its
// owner contributes), so the full [N, V] logits never exist on one rank. Backward is local:
// dlogits = dloss * (softmax - onehot) on the held slice.
// Legend: N rows, Vl vocabulary ids held here, V the whole vocabulary. A target of -1 is ignored.
#pragma once
#include <cstdint>

#include "parallel/comm.h"

namespace ff {

void vocab_parallel_cross_entropy_forward(float* loss, float* lse, const float* logits, const int32_t* targets,
                                          int64_t N, int64_t Vl, int64_t v0, int64_t V, const Communicator& tp);
// dlogits [N, Vl] OVERWRITTEN; may alias logits.
void vocab_parallel_cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, const float* dloss, int64_t N, int64_t Vl,
                                           int64_t v0);

// Knowledge distillation's forward KL(p_t || p_s) per row at temperature tau, over the same
// vocabulary shards of a student's and a teacher's logits (tp null: not sharded):
//   p = softmax(z / tau) over the whole vocabulary,
//   kl[n] = sum_v p_t (log p_t - log p_s) = sum_v p_t (z_t - z_s) / tau + lse_s - lse_t,
// with lse the log-sum-exp of z / tau (saved for backward). Two all-reduces of the max and the
// sum for each model, one of the partial KL.
void vocab_parallel_kl_forward(float* kl, float* lse_s, float* lse_t, const float* zs, const float* zt, int64_t N,
                               int64_t Vl, float tau, const Communicator* tp);
// dzs[n, :] = g[n] (p_s - p_t) / tau on the held slice, OVERWRITTEN (may alias zs).
void vocab_parallel_kl_backward(float* dzs, const float* zs, const float* zt, const float* lse_s, const float* lse_t,
                                const float* g, int64_t N, int64_t Vl, float tau);

}  // namespace ff
