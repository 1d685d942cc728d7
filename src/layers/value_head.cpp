#include "layers/value_head.h"

namespace ff {

ValueHead::ValueHead(ParamStore& store, int64_t D, float init_std)
    : D_(D), w_(store.add("score.weight", Shape{1, D}, ParamInit::normal, init_std)) {}

void ValueHead::forward(Saved& s, const float* x, int64_t N, Arena& arena) const {
  s.x = x;
  s.v = arena.alloc(Shape{N});
  float* v = s.v.f32();
  const float* w = w_->value;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    double acc = 0;
    for (int64_t d = 0; d < D_; ++d) acc += double(x[n * D_ + d]) * w[d];
    v[n] = static_cast<float>(acc);
  }
}

void ValueHead::backward(float* dx, const float* dv, const Saved& s, int64_t N) const {
  const float* w = w_->value;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D_; ++d) dx[n * D_ + d] = dv[n] * w[d];
  if (!w_->grad) return;  // frozen
  for (int64_t d = 0; d < D_; ++d) {
    double acc = 0;
    for (int64_t n = 0; n < N; ++n) acc += double(dv[n]) * s.x[n * D_ + d];
    w_->grad[d] += static_cast<float>(acc);
  }
}

}  // namespace ff
