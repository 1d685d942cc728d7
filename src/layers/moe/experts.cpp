#include "layers/moe/experts.h"

#include <algorithm>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/bf16.h"
#include "layers/mlp.h"

namespace ff {

Experts::Experts(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, int64_t first,
                 int64_t count, float init_std, float out_init_std, int64_t etp_rank, int64_t etp_size)
    : D_(cfg.d_model), F_(cfg.moe_ffn_hidden / etp_size), W_(fc1_width(cfg.activation, F_)),
      count_(count), act_(cfg.activation), compute_(&compute) {
  const int64_t F = cfg.moe_ffn_hidden, f0 = etp_rank * F_;
  FF_CHECK(F % etp_size == 0, "model.moe_ffn_hidden = %lld is not divisible by parallel.etp = %lld", (long long)F,
           (long long)etp_size);
  for (int64_t e = first; e < first + count; ++e) {
    std::string p = prefix + ".experts." + std::to_string(e);
    Param* w = nullptr;
    if (act_ == Activation::swiglu) {
      w = store.add_slice(p + ".gate_proj.weight", Shape{F, D_}, Shape{F_, D_}, Shape{f0, 0}, ParamInit::normal,
                          init_std);
      store.add_slice(p + ".up_proj.weight", Shape{F, D_}, Shape{F_, D_}, Shape{f0, 0}, ParamInit::normal, init_std);
    } else {
      w = store.add_slice(p + ".up_proj.weight", Shape{F, D_}, Shape{F_, D_}, Shape{f0, 0}, ParamInit::normal,
                          init_std);
    }
    if (e == first) fc1_ = w;
  }
  for (auto it = store.params().rbegin(); it != store.params().rend() && it->name.rfind(prefix + ".experts.", 0) == 0; ++it)
    it->expert = true;
  for (int64_t e = first; e < first + count; ++e) {
    Param* w = store.add_slice(prefix + ".experts." + std::to_string(e) + ".down_proj.weight", Shape{D_, F},
                               Shape{D_, F_}, Shape{0, f0}, ParamInit::normal, out_init_std);
    if (e == first) fc2_ = w;
    w->expert = true;
  }
}

namespace {
// scaled[r, :] = act[r, :] * p[r], written in the operand's dtype (fused with the cast to bf16).
void scale_rows(const Tensor& scaled, const float* act, const float* p, int64_t R, int64_t F) {
  constexpr int64_t kCols = 256;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const float* a = act + r * F;
    if (scaled.dtype == DType::f32) {
      float* o = scaled.f32() + r * F;
#pragma omp simd
      for (int64_t j = 0; j < F; ++j) o[j] = a[j] * p[r];
      continue;
    }
    float tmp[kCols];
    for (int64_t j0 = 0; j0 < F; j0 += kCols) {
      const int64_t n = std::min(kCols, F - j0);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) tmp[j] = a[j0 + j] * p[r];
      cpu::to_bf16_serial(scaled.bf16() + r * F + j0, tmp, n);
    }
  }
}
}  // namespace

void Experts::forward(Saved& s, float* out, const float* rows, const float* row_probs,
                      const std::vector<int64_t>& tokens_per_expert, Arena& arena) const {
  int64_t R = 0;
  for (int64_t n : tokens_per_expert) R += n;
  const bool swiglu = act_ == Activation::swiglu;
  s.x_op = compute_->operand(rows, R, D_, arena);
  // SwiGLU's pre-activation only feeds the fused pass and its backward: kept in the operand dtype
  // (bf16 under bf16 compute, as autocast keeps a linear's output), half the memory and traffic.
  s.h1 = swiglu ? compute_->alloc_operand(R, W_, arena) : arena.alloc(Shape{R, W_});
  s.scaled = compute_->alloc_operand(R, F_, arena);
  compute_->grouped_forward(s.h1, s.x_op, Weight::of(*fc1_), W_ * D_, tokens_per_expert, D_, W_);
  if (swiglu) {  // one fused pass: activation, prob scaling, cast
    const bool b16 = s.scaled.dtype == DType::bf16;
    float* o32 = b16 ? nullptr : s.scaled.f32();
    bf16_t* o16 = b16 ? s.scaled.bf16() : nullptr;
    if (s.h1.dtype == DType::bf16)
      cpu::swiglu_scaled_forward(o32, o16, s.h1.bf16(), row_probs, R, F_);
    else
      cpu::swiglu_scaled_forward(o32, o16, s.h1.f32(), row_probs, R, F_);
  } else {
    s.act = arena.alloc(Shape{R, F_});
    activation_forward(act_, s.act.f32(), s.h1.f32(), R, F_);
    scale_rows(s.scaled, s.act.f32(), row_probs, R, F_);
  }
  compute_->grouped_forward(out, s.scaled, Weight::of(*fc2_), D_ * F_, tokens_per_expert, F_, D_);
}

void Experts::backward(float* drows, float* drow_probs, const float* dout, const float* row_probs, const Saved& s,
                       const std::vector<int64_t>& tokens_per_expert, Arena& scratch) const {
  int64_t R = 0;
  for (int64_t n : tokens_per_expert) R += n;
  float* dscaled = scratch.alloc_f32(R * F_);
  compute_->grouped_backward(dscaled, Weight::of(*fc2_), D_ * F_, compute_->operand(dout, R, D_, scratch), s.scaled,
                             tokens_per_expert, F_, D_);
  Tensor dh1;  // [R, W] operand
  if (act_ == Activation::swiglu) {  // one fused pass: prob gradient, activation backward, cast
    dh1 = compute_->alloc_operand(R, W_, scratch);
    const bool b16 = dh1.dtype == DType::bf16;
    float* d32 = b16 ? nullptr : dh1.f32();
    bf16_t* d16 = b16 ? dh1.bf16() : nullptr;
    if (s.h1.dtype == DType::bf16)
      cpu::swiglu_scaled_backward(drow_probs, d32, d16, dscaled, s.h1.bf16(), row_probs, R, F_);
    else
      cpu::swiglu_scaled_backward(drow_probs, d32, d16, dscaled, s.h1.f32(), row_probs, R, F_);
  } else {
    // dprob[r] = <dscaled[r], act[r]>;  dact = dscaled * p (written over dscaled).
    const float* act = s.act.f32();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      double dp = 0;
      for (int64_t j = 0; j < F_; ++j) {
        dp += static_cast<double>(dscaled[r * F_ + j]) * act[r * F_ + j];
        dscaled[r * F_ + j] *= row_probs[r];
      }
      drow_probs[r] = static_cast<float>(dp);
    }
    float* dh1_f32 = scratch.alloc_f32(R * W_);
    activation_backward(act_, dh1_f32, dscaled, s.h1.f32(), R, F_);
    dh1 = compute_->operand(dh1_f32, R, W_, scratch);
  }
  compute_->grouped_backward(drows, Weight::of(*fc1_), W_ * D_, dh1, s.x_op, tokens_per_expert, D_, W_);
}

}  // namespace ff
