#include "layers/norm.h"

#include "kernels/cpu/norm.h"

namespace ff {

Norm::Norm(ParamStore& store, const std::string& prefix, int64_t D, NormKind kind, float eps)
    : D_(D), kind_(kind), eps_(eps) {
  if (kind == NormKind::rmsnorm) {
    weight_ = store.add(prefix + ".weight", Shape{D}, ParamInit::ones, 0.0f, false);
  } else {  // zero-centred gain: gamma = 0 is the identity scale
    weight_ = store.add(prefix + ".weight", Shape{D}, ParamInit::zeros, 0.0f, false);
    bias_ = store.add(prefix + ".bias", Shape{D}, ParamInit::zeros, 0.0f, false);
    bias_->tp_replicated = true;
  }
  weight_->tp_replicated = true;
}

void Norm::forward(Saved& s, const float* x, int64_t N, Arena& arena) const {
  s.y = arena.alloc(Shape{N, D_});
  s.rstd = arena.alloc(Shape{N});
  if (kind_ == NormKind::rmsnorm) {
    cpu::rmsnorm_forward(s.y.f32(), s.rstd.f32(), x, weight_->value, eps_, N, D_);
  } else {
    s.mean = arena.alloc(Shape{N});
    cpu::layernorm1p_forward(s.y.f32(), s.mean.f32(), s.rstd.f32(), x, weight_->value, bias_->value, eps_, N, D_);
  }
}

void Norm::backward(float* dx, const float* dy, const float* x, const Saved& s, int64_t N) const {
  if (kind_ == NormKind::rmsnorm)
    cpu::rmsnorm_backward(dx, weight_->grad, dy, x, weight_->value, s.rstd.f32(), N, D_);
  else
    cpu::layernorm1p_backward(dx, weight_->grad, bias_->grad, dy, x, weight_->value, s.mean.f32(), s.rstd.f32(), N, D_);
}

}  // namespace ff
