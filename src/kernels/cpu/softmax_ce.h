// Softmax cross-entropy over a vocabulary, all in fp32 with max subtraction.
// Legend: N rows, V classes. A target of -1 marks a row ignored by the loss (loss 0, gradient 0).
#pragma once
#include <cstdint>

namespace ff::cpu {

// loss[n] = lse(logits[n]) - logits[n, target[n]];  lse[n] saved. Targets must be in [0, V) or -1.
void cross_entropy_forward(float* loss, float* lse, const float* logits, const int32_t* targets,
                           int64_t N, int64_t V);
// dlogits[n, :] = dloss[n] * (softmax(logits[n]) - onehot(target[n]))   (OVERWRITTEN).
// dlogits may alias logits (the logits are consumed in place, saving N*V floats).
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, const float* dloss, int64_t N, int64_t V);

}  // namespace ff::cpu
