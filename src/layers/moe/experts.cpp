#include "layers/moe/experts.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/bf16.h"
#include "layers/mlp.h"

namespace ff {

Experts::Experts(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, int64_t first,
                 int64_t count, float init_std, float out_init_std, int64_t etp_rank, int64_t etp_size,
                 const LoraOptions& lora)
    : D_(cfg.d_model), F_(cfg.moe_ffn_hidden / etp_size), W_(fc1_width(cfg.activation, F_)),
      count_(count), act_(cfg.activation), compute_(&compute) {
  const int64_t F = cfg.moe_ffn_hidden, f0 = etp_rank * F_;
  FF_CHECK(F % etp_size == 0, "model.moe_ffn_hidden = %lld is not divisible by parallel.etp = %lld", (long long)F,
           (long long)etp_size);
  const bool swiglu = act_ == Activation::swiglu;
  std::vector<Param*> fc1, fc2;
  for (int64_t e = first; e < first + count; ++e) {
    std::string p = prefix + ".experts." + std::to_string(e);
    if (swiglu)
      fc1.push_back(store.add_slice(p + ".gate_proj.weight", Shape{F, D_}, Shape{F_, D_}, Shape{f0, 0},
                                    ParamInit::normal, init_std));
    fc1.push_back(store.add_slice(p + ".up_proj.weight", Shape{F, D_}, Shape{F_, D_}, Shape{f0, 0}, ParamInit::normal,
                                  init_std));
  }
  for (int64_t e = first; e < first + count; ++e)
    fc2.push_back(store.add_slice(prefix + ".experts." + std::to_string(e) + ".down_proj.weight", Shape{D_, F},
                                  Shape{D_, F_}, Shape{0, f0}, ParamInit::normal, out_init_std));
  for (Param* w : fc1) w->expert = true;
  for (Param* w : fc2) w->expert = true;
  fc1_ = fc1[0];
  fc2_ = fc2[0];
  stacks_ = {fc1, fc2};
  // The adapters after every base weight, so the base stacks stay adjacent.
  r_ = lora.rank;
  scale_ = r_ > 0 ? lora.alpha / static_cast<float>(r_) : 0.0f;
  if (swiglu && lora.adapts("experts.gate_proj"))
    add_adapters(store, prefix, "gate_proj", first, adapters_[kGate], true, D_, F, etp_rank, etp_size);
  if (lora.adapts("experts.up_proj")) {
    add_adapters(store, prefix, "up_proj", first, adapters_[kUp], true, D_, F, etp_rank, etp_size);
    adapters_[kUp].col = swiglu ? F_ : 0;  // h1 is [gate | up] per row under SwiGLU
  }
  if (lora.adapts("experts.down_proj"))
    add_adapters(store, prefix, "down_proj", first, adapters_[kDown], false, F, D_, etp_rank, etp_size);
}

void Experts::add_adapters(ParamStore& store, const std::string& prefix, const char* proj, int64_t first, Adapter& a,
                           bool split_out, int64_t in_global, int64_t out_global, int64_t etp_rank, int64_t etp_size) {
  const int64_t r = r_;
  a.in = split_out ? in_global : in_global / etp_size;
  a.out = split_out ? out_global / etp_size : out_global;
  const int64_t in0 = split_out ? 0 : etp_rank * a.in, out0 = split_out ? etp_rank * a.out : 0;
  auto name = [&](int64_t e) { return prefix + ".experts." + std::to_string(e) + "." + proj; };
  std::vector<Param*> As, Bs;
  // A: normal with std 1 / sqrt(in) over the whole input, as Linear's; B: zeros.
  for (int64_t e = first; e < first + count_; ++e)
    As.push_back(store.add_slice(name(e) + ".lora_A.weight", Shape{r, in_global}, Shape{r, a.in}, Shape{0, in0},
                                 ParamInit::normal, 1.0f / std::sqrt(static_cast<float>(in_global)), false));
  for (int64_t e = first; e < first + count_; ++e)
    Bs.push_back(store.add_slice(name(e) + ".lora_B.weight", Shape{out_global, r}, Shape{a.out, r}, Shape{out0, 0},
                                 ParamInit::zeros, 0.0f, false));
  for (Param* p : As) p->expert = true;
  for (Param* p : Bs) p->expert = true;
  // The factor every ETP rank holds whole: A beside split rows (gate, up), B beside split columns
  // (down). Its gradient there is a partial sum over ETP; it is counted and written once.
  if (etp_size > 1)
    for (Param* p : split_out ? As : Bs) {
      p->etp_partial_grad = true;
      p->replica = etp_rank > 0;
    }
  a.A = As[0];
  a.B = Bs[0];
  stacks_.push_back(As);
  stacks_.push_back(Bs);
}

void Experts::check_stacked() const {
  for (const auto& stack : stacks_)
    for (size_t i = 1; i < stack.size(); ++i) {
      const Param &p = *stack[i - 1], &q = *stack[i];
      const bool adjacent = q.value == p.value + p.numel() && (q.grad == nullptr) == (p.grad == nullptr) &&
                            (q.grad == nullptr || q.grad == p.grad + p.numel());
      FF_CHECK(adjacent, "'%s' does not follow '%s' in the parameter buffers: the experts of a layer are trained or "
               "frozen together (check train.freeze)", q.name.c_str(), p.name.c_str());
    }
}

void Experts::adapter_forward(float* y, int64_t y_cols, Tensor& u, const Adapter& a, const Tensor& x,
                              const std::vector<int64_t>& counts, int64_t R, Arena& arena) const {
  const int64_t r = r_;
  u = arena.alloc(Shape{R, r});  // u = x A_e^T per segment (down under ETP: a partial sum, reduced with out)
  compute_->grouped_forward(u.f32(), x, Weight::of(*a.A), r * a.in, counts, a.in, r);
  float* t = arena.alloc_f32(R * a.out);  // u B_e^T
  compute_->grouped_forward(t, compute_->operand(u.f32(), R, r, arena), Weight::of(*a.B), a.out * r, counts, r, a.out);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < R; ++n) {
    float* yr = y + n * y_cols + a.col;
    const float* tr = t + n * a.out;
    for (int64_t c = 0; c < a.out; ++c) yr[c] += scale_ * tr[c];
  }
}

void Experts::adapter_backward(float* dx, const float* dy, int64_t dy_cols, const Tensor& u, const Adapter& a,
                               const Tensor& x, const std::vector<int64_t>& counts, int64_t R, Arena& scratch) const {
  const int64_t r = r_;
  // y += s u B_e^T:  dB_e += (s dy)^T u,  du = (s dy) B_e.
  float* dys = scratch.alloc_f32(R * a.out);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < R; ++n)
    for (int64_t c = 0; c < a.out; ++c) dys[n * a.out + c] = scale_ * dy[n * dy_cols + a.col + c];
  float* du = scratch.alloc_f32(R * r);
  compute_->grouped_backward(du, Weight::of(*a.B), a.out * r, compute_->operand(dys, R, a.out, scratch),
                             compute_->operand(u.f32(), R, r, scratch), counts, r, a.out);
  // u = x A_e^T:  dA_e += du^T x,  dx += du A_e.
  float* dxa = scratch.alloc_f32(R * a.in);
  compute_->grouped_backward(dxa, Weight::of(*a.A), r * a.in, compute_->operand(du, R, r, scratch), x, counts, a.in, r);
  const int64_t n_dx = R * a.in;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n_dx; ++i) dx[i] += dxa[i];
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
  check_stacked();
  const bool fc1_adapted = acting(kGate) || acting(kUp);
  s.x_op = compute_->operand(rows, R, D_, arena);
  // SwiGLU's pre-activation only feeds the fused pass and its backward: kept in the operand dtype
  // (bf16 under bf16 compute, as autocast keeps a linear's output), half the memory and traffic;
  // fp32 when gate/up adapters add to it.
  s.h1 = swiglu && !fc1_adapted ? compute_->alloc_operand(R, W_, arena) : arena.alloc(Shape{R, W_});
  s.scaled = compute_->alloc_operand(R, F_, arena);
  compute_->grouped_forward(s.h1, s.x_op, Weight::of(*fc1_), W_ * D_, tokens_per_expert, D_, W_);
  for (int k : {kGate, kUp})
    if (acting(k)) adapter_forward(s.h1.f32(), W_, s.u[k], adapters_[k], s.x_op, tokens_per_expert, R, arena);
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
  if (acting(kDown))
    adapter_forward(out, D_, s.u[kDown], adapters_[kDown], s.scaled, tokens_per_expert, R, arena);
}

void Experts::backward(float* drows, float* drow_probs, const float* dout, const float* row_probs, const Saved& s,
                       const std::vector<int64_t>& tokens_per_expert, Arena& scratch) const {
  int64_t R = 0;
  for (int64_t n : tokens_per_expert) R += n;
  float* dscaled = scratch.alloc_f32(R * F_);
  compute_->grouped_backward(dscaled, Weight::of(*fc2_), D_ * F_, compute_->operand(dout, R, D_, scratch), s.scaled,
                             tokens_per_expert, F_, D_);
  if (acting(kDown))  // before the prob gradient, which reads dscaled
    adapter_backward(dscaled, dout, D_, s.u[kDown], adapters_[kDown], s.scaled, tokens_per_expert, R, scratch);
  const bool fc1_adapted = acting(kGate) || acting(kUp);
  Tensor dh1;                // [R, W] operand
  float* dh1_f32 = nullptr;  // its fp32 values (what the gate/up adapters read)
  if (act_ == Activation::swiglu) {  // one fused pass: prob gradient, activation backward, cast
    Tensor d = fc1_adapted ? scratch.alloc(Shape{R, W_}) : compute_->alloc_operand(R, W_, scratch);
    const bool b16 = d.dtype == DType::bf16;
    float* d32 = b16 ? nullptr : d.f32();
    bf16_t* d16 = b16 ? d.bf16() : nullptr;
    if (s.h1.dtype == DType::bf16)
      cpu::swiglu_scaled_backward(drow_probs, d32, d16, dscaled, s.h1.bf16(), row_probs, R, F_);
    else
      cpu::swiglu_scaled_backward(drow_probs, d32, d16, dscaled, s.h1.f32(), row_probs, R, F_);
    dh1_f32 = d32;
    dh1 = fc1_adapted ? compute_->operand(d32, R, W_, scratch) : d;
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
    dh1_f32 = scratch.alloc_f32(R * W_);
    activation_backward(act_, dh1_f32, dscaled, s.h1.f32(), R, F_);
    dh1 = compute_->operand(dh1_f32, R, W_, scratch);
  }
  compute_->grouped_backward(drows, Weight::of(*fc1_), W_ * D_, dh1, s.x_op, tokens_per_expert, D_, W_);
  for (int k : {kGate, kUp})
    if (acting(k))
      adapter_backward(drows, dh1_f32, W_, s.u[k], adapters_[k], s.x_op, tokens_per_expert, R, scratch);
}

}  // namespace ff
