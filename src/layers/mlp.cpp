#include "layers/mlp.h"

#include "kernels/cpu/activation.h"
#include "kernels/cpu/gemm.h"

namespace ff {

int64_t fc1_width(Activation act, int64_t F) { return act == Activation::swiglu ? 2 * F : F; }

void activation_forward(Activation act, float* out, const float* in, int64_t N, int64_t F) {
  switch (act) {
    case Activation::swiglu: cpu::swiglu_forward(out, in, N, F); break;
    case Activation::squared_relu: cpu::squared_relu_forward(out, in, N, F); break;
    case Activation::gelu: cpu::gelu_forward(out, in, N, F); break;
  }
}

void activation_backward(Activation act, float* din, const float* dout, const float* in, int64_t N, int64_t F) {
  switch (act) {
    case Activation::swiglu: cpu::swiglu_backward(din, dout, in, N, F); break;
    case Activation::squared_relu: cpu::squared_relu_backward(din, dout, in, N, F); break;
    case Activation::gelu: cpu::gelu_backward(din, dout, in, N, F); break;
  }
}

Mlp::Mlp(ParamStore& store, const std::string& prefix, int64_t D, int64_t F, Activation act,
         float init_std, float out_init_std)
    : D_(D), F_(F), act_(act) {
  if (act == Activation::swiglu) {
    fc1_ = store.add(prefix + ".gate_proj.weight", Shape{F, D}, ParamInit::normal, init_std);
    store.add(prefix + ".up_proj.weight", Shape{F, D}, ParamInit::normal, init_std);
  } else {
    fc1_ = store.add(prefix + ".up_proj.weight", Shape{F, D}, ParamInit::normal, init_std);
  }
  fc2_ = store.add(prefix + ".down_proj.weight", Shape{D, F}, ParamInit::normal, out_init_std);
}

void Mlp::forward(Saved& s, float* out, const float* x, int64_t N, Arena& arena) const {
  const int64_t W = fc1_width(act_, F_);
  s.h1 = arena.alloc(Shape{N, W});
  s.act = arena.alloc(Shape{N, F_});
  cpu::linear_forward(s.h1.f32(), x, fc1_->value, N, D_, W);
  activation_forward(act_, s.act.f32(), s.h1.f32(), N, F_);
  cpu::linear_forward(out, s.act.f32(), fc2_->value, N, F_, D_);
}

void Mlp::backward(float* dx, const float* dout, const float* x, const Saved& s, int64_t N,
                   bool accumulate_dx, Arena& scratch) const {
  const int64_t W = fc1_width(act_, F_);
  float* dact = scratch.alloc_f32(N * F_);
  float* dh1 = scratch.alloc_f32(N * W);
  cpu::linear_backward(dact, fc2_->grad, dout, s.act.f32(), fc2_->value, N, F_, D_, false);
  activation_backward(act_, dh1, dact, s.h1.f32(), N, F_);
  cpu::linear_backward(dx, fc1_->grad, dh1, x, fc1_->value, N, D_, W, accumulate_dx);
}

}  // namespace ff
