#include "kernels/cpu/adamw.h"

#include <cmath>

#include "core/check.h"

namespace ff::cpu {

void adamw_update(float* param, float* m, float* v, const float* grad, int64_t n,
                  const AdamWStep& s) {
  // m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  // p -= lr * ( mhat / (sqrt(vhat) + eps) + wd * p ),  mhat = m / (1-b1^t), vhat = v / (1-b2^t).
  // The decay uses p before this step's update (decoupled weight decay, Loshchilov & Hutter).
  FF_CHECK(s.step >= 1, "adamw_update: step must start at 1, got %lld",
           static_cast<long long>(s.step));
  const double t = static_cast<double>(s.step);
  const float bc1 = static_cast<float>(1.0 / (1.0 - std::pow(double(s.beta1), t)));
  const float bc2 = static_cast<float>(1.0 / (1.0 - std::pow(double(s.beta2), t)));
  const float b1 = s.beta1, b2 = s.beta2, lr = s.lr, eps = s.eps, wd = s.weight_decay, gs = s.grad_scale;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * gs;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = param[i];
    param[i] = p - lr * ((mi * bc1) / (std::sqrt(vi * bc2) + eps) + wd * p);
  }
}

}  // namespace ff::cpu
