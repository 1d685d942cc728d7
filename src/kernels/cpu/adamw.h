// AdamW over a flat fp32 buffer (decoupled weight decay, bias-corrected moments). The gradient is
// first multiplied by grad_scale (global-norm clipping, fused here to save a pass over memory):
//   g = grad_scale * grad;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
#pragma once
#include <cstdint>

namespace ff::cpu {

struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // t, starting at 1
  float grad_scale = 1.0f;
};

void adamw_update(float* param, float* m, float* v, const float* grad, int64_t n,
                  const AdamWStep& s);

}  // namespace ff::cpu
