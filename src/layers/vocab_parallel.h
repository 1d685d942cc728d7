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

}  // namespace ff
