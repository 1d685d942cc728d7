#include "layers/mlp.h"

#include "kernels/cpu/activation.h"

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

Mlp::Mlp(ParamStore& store, Compute& compute, const std::string& prefix, int64_t D, int64_t F, Activation act,
         float init_std, float out_init_std, TensorParallel tp)
    : D_(D), F_(F / tp.size()), act_(act), tp_(tp), compute_(&compute) {
  FF_CHECK(F % tp.size() == 0, "%s: hidden width %lld is not divisible by parallel.tp = %d", prefix.c_str(),
           (long long)F, tp.size());
  const int64_t f0 = tp.rank() * F_;
  if (act == Activation::swiglu) {
    fc1_ = store.add_slice(prefix + ".gate_proj.weight", Shape{F, D}, Shape{F_, D}, Shape{f0, 0}, ParamInit::normal,
                           init_std);
    store.add_slice(prefix + ".up_proj.weight", Shape{F, D}, Shape{F_, D}, Shape{f0, 0}, ParamInit::normal, init_std);
  } else {
    fc1_ = store.add_slice(prefix + ".up_proj.weight", Shape{F, D}, Shape{F_, D}, Shape{f0, 0}, ParamInit::normal,
                           init_std);
  }
  fc2_ = store.add_slice(prefix + ".down_proj.weight", Shape{D, F}, Shape{D, F_}, Shape{0, f0}, ParamInit::normal,
                         out_init_std);
}

void Mlp::forward(Saved& s, float* out, const float* x, int64_t N, Arena& arena) const {
  const int64_t W = fc1_width(act_, F_);
  s.x_op = compute_->operand(tp_.enter(x, N, D_, arena), N, D_, arena);
  s.h1 = arena.alloc(Shape{N, W});
  compute_->linear_forward(s.h1.f32(), s.x_op, Weight::of(*fc1_), N, D_, W);
  if (compute_->bf16() && act_ == Activation::swiglu) {  // one pass: SwiGLU cast to its bf16 operand
    s.act = compute_->alloc_operand(N, F_, arena);
    cpu::swiglu_scaled_forward(nullptr, s.act.bf16(), s.h1.f32(), nullptr, N, F_);
  } else if (compute_->bf16()) {  // the activation in fp32 scratch, kept as its bf16 operand
    float* act = arena.alloc_f32(N * F_);
    activation_forward(act_, act, s.h1.f32(), N, F_);
    s.act = compute_->operand(act, N, F_, arena);
  } else {
    s.act = arena.alloc(Shape{N, F_});
    activation_forward(act_, s.act.f32(), s.h1.f32(), N, F_);
  }
  float* partial = tp_.active() ? arena.alloc_f32(N * D_) : out;
  compute_->linear_forward(partial, s.act, Weight::of(*fc2_), N, F_, D_);
  tp_.leave(out, partial, N, D_);
}

void Mlp::backward(float* dx, const float* dout, const Saved& s, int64_t N, bool accumulate_dx, Arena& scratch) const {
  const int64_t W = fc1_width(act_, F_);
  float* dact = scratch.alloc_f32(N * F_);
  float* dh1 = scratch.alloc_f32(N * W);
  const float* dout_full = tp_.leave_backward(dout, N, D_, scratch);
  compute_->linear_backward(dact, Weight::of(*fc2_), compute_->operand(dout_full, N, D_, scratch), s.act, N, F_, D_,
                            false);
  activation_backward(act_, dh1, dact, s.h1.f32(), N, F_);
  const Tensor dh1_op = compute_->operand(dh1, N, W, scratch);
  if (!tp_.active()) {
    compute_->linear_backward(dx, Weight::of(*fc1_), dh1_op, s.x_op, N, D_, W, accumulate_dx);
    return;
  }
  float* dx_full = scratch.alloc_f32(N * D_);
  compute_->linear_backward(dx_full, Weight::of(*fc1_), dh1_op, s.x_op, N, D_, W, false);
  tp_.enter_backward(dx, dx_full, N, D_, accumulate_dx, scratch);
}

}  // namespace ff
