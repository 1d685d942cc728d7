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

namespace {
std::vector<LinearPart> fc1_parts(const std::string& prefix, int64_t F, Activation act, const LoraOptions& lora) {
  std::vector<LinearPart> parts;
  if (act == Activation::swiglu) parts.push_back({prefix + ".gate_proj", F, lora.adapts("gate_proj")});
  parts.push_back({prefix + ".up_proj", F, lora.adapts("up_proj")});
  return parts;
}
}  // namespace

Mlp::Mlp(ParamStore& store, Compute& compute, const std::string& prefix, int64_t D, int64_t F, Activation act,
         float init_std, float out_init_std, TensorParallel tp, const LoraOptions& lora)
    : D_(D), F_(F / tp.size()), act_(act), tp_(tp), compute_(&compute),
      fc1_(store, compute, Placement::column, tp, D, fc1_parts(prefix, F, act, lora), init_std, lora),
      fc2_(store, compute, Placement::row, tp, F, {{prefix + ".down_proj", D, lora.adapts("down_proj")}}, out_init_std,
           lora) {}

void Mlp::forward(Saved& s, float* out, const float* x, int64_t N, Arena& arena) const {
  const int64_t W = fc1_width(act_, F_);
  s.x_op = compute_->operand(tp_.enter(x, N, D_, arena), N, D_, arena);
  s.h1 = arena.alloc(Shape{N, W});
  fc1_.forward(s.h1.f32(), s.x_op, N, &s.fc1_lora, arena);
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
  fc2_.forward(partial, s.act, N, &s.fc2_lora, arena);
  tp_.leave(out, partial, N, D_);
}

void Mlp::backward(float* dx, const float* dout, const Saved& s, int64_t N, bool accumulate_dx, Arena& scratch) const {
  const int64_t W = fc1_width(act_, F_);
  float* dact = scratch.alloc_f32(N * F_);
  float* dh1 = scratch.alloc_f32(N * W);
  const float* dout_full = tp_.leave_backward(dout, N, D_, scratch);
  fc2_.backward(dact, dout_full, compute_->operand(dout_full, N, D_, scratch), s.act, s.fc2_lora, N, false, scratch);
  activation_backward(act_, dh1, dact, s.h1.f32(), N, F_);
  const Tensor dh1_op = compute_->operand(dh1, N, W, scratch);
  if (!tp_.active()) {
    fc1_.backward(dx, dh1, dh1_op, s.x_op, s.fc1_lora, N, accumulate_dx, scratch);
    return;
  }
  float* dx_full = scratch.alloc_f32(N * D_);
  fc1_.backward(dx_full, dh1, dh1_op, s.x_op, s.fc1_lora, N, false, scratch);
  tp_.enter_backward(dx, dx_full, N, D_, accumulate_dx, scratch);
}

}  // namespace ff
