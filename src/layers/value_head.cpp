#include "layers/value_head.h"

namespace ff {

ValueHead::ValueHead(ParamStore& store, int64_t D, int64_t K, float init_std)
    : D_(D), K_(K), w_(store.add("score.weight", Shape{K, D}, ParamInit::normal, init_std)) {}

void ValueHead::forward(Saved& s, const float* x, int64_t N, Arena& arena) const {
  s.x = x;
  s.v = arena.alloc(Shape{N, K_});
  float* v = s.v.f32();
  const float* w = w_->value;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K_; ++k) {
      double acc = 0;
      for (int64_t d = 0; d < D_; ++d) acc += double(x[n * D_ + d]) * w[k * D_ + d];
      v[n * K_ + k] = static_cast<float>(acc);
    }
}

void ValueHead::backward(float* dx, const float* dv, const Saved& s, int64_t N) const {
  const float* w = w_->value;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D_; ++d) {
      double acc = 0;
      for (int64_t k = 0; k < K_; ++k) acc += double(dv[n * K_ + k]) * w[k * D_ + d];
      dx[n * D_ + d] = static_cast<float>(acc);
    }
  if (!w_->grad) return;  // frozen
  for (int64_t k = 0; k < K_; ++k)
    for (int64_t d = 0; d < D_; ++d) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += double(dv[n * K_ + k]) * s.x[n * D_ + d];
      w_->grad[k * D_ + d] += static_cast<float>(acc);
    }
}

}  // namespace ff
