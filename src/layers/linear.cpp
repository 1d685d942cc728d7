#include "layers/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/rng.h"

namespace ff {

Linear::Linear(ParamStore& store, Compute& compute, Placement placement, TensorParallel tp, int64_t in,
               const std::vector<LinearPart>& parts, float init_std, const LoraOptions& lora)
    : compute_(&compute), placement_(placement), tp_(tp), in_global_(in), lora_(lora) {
  const int T = placement == Placement::plain ? 1 : tp.size(), t = placement == Placement::plain ? 0 : tp.rank();
  const bool column = placement == Placement::column, row = placement == Placement::row;
  FF_CHECK(!row || in % T == 0, "%s: input width %lld is not divisible by parallel.tp = %d", parts[0].name.c_str(),
           (long long)in, T);
  in_ = row ? in / T : in;
  in_offset_ = row ? t * in_ : 0;
  // The weights of all parts first (adjacent: one fused matrix), then the adapters.
  for (const LinearPart& p : parts) {
    FF_CHECK(!column || p.out % T == 0, "%s: output width %lld is not divisible by parallel.tp = %d", p.name.c_str(),
             (long long)p.out, T);
    const int64_t lo = column ? p.out / T : p.out;
    Param* w = store.add_slice(p.name + ".weight", Shape{p.out, in}, Shape{lo, in_}, Shape{column ? t * lo : 0, in_offset_},
                               ParamInit::normal, init_std);
    if (!weight_) weight_ = w;
    else w->fused_with_previous = true;
    if (p.adapted && lora.rank > 0) adapters_.push_back({nullptr, nullptr, out_, lo, p.name});
    out_ += lo;
  }
  const int64_t r = lora.rank;
  scale_ = r > 0 ? lora.alpha / static_cast<float>(r) : 0.0f;
  for (Adapter& a : adapters_) {
    const int64_t out_global = column ? a.width * T : a.width;
    // A: Kaiming-style normal over the input (PEFT uses Kaiming-uniform); B: zeros.
    a.A = store.add_slice(a.name + ".lora_A.weight", Shape{r, in}, Shape{r, in_}, Shape{0, in_offset_},
                          ParamInit::normal, 1.0f / std::sqrt(static_cast<float>(in)), false);
    a.B = store.add_slice(a.name + ".lora_B.weight", Shape{out_global, r}, Shape{a.width, r},
                          Shape{column ? t * a.width : 0, 0}, ParamInit::zeros, 0.0f, false);
    Param* whole = column ? a.A : row ? a.B : nullptr;  // the factor every TP rank holds whole
    if (whole && tp.size() > 1) {
      whole->tp_replicated = true;
      whole->tp_partial_grad = true;
    }
  }
}

void Linear::dropout(float* x_drop, const Tensor& x, int64_t N, const Adapter& a, uint64_t call) const {
  // keep with probability 1 - p, scaled by 1 / (1 - p); the mask is drawn over the global width
  // in row order, this rank keeping its columns, so it is the same on every layout.
  Rng rng(lora_.seed, "lora-dropout:" + a.name, call);
  const float p = lora_.dropout, keep_scale = 1.0f / (1.0f - p);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < in_global_; ++c) {
      const bool keep = rng.uniform() >= p;
      if (c < in_offset_ || c >= in_offset_ + in_) continue;
      const int64_t i = n * in_ + c - in_offset_;
      const float v = x.dtype == DType::f32 ? x.f32()[i] : bf16_to_float(x.bf16()[i]);
      x_drop[i] = keep ? v * keep_scale : 0.0f;
    }
}

void Linear::forward(float* y, const Tensor& x, int64_t N, Saved* s, Arena& arena) const {
  compute_->linear_forward(y, x, Weight::of(*weight_), N, in_, out_);
  if (adapters_.empty() || !compute_->adapters_on()) return;
  const int64_t r = lora_.rank, R = r * static_cast<int64_t>(adapters_.size());
  const bool drop = s != nullptr && lora_.dropout > 0 && compute_->training();
  Tensor x_in = x;
  if (drop) {  // one mask for the Linear's adapters (they read the same input)
    float* xd = arena.alloc_f32(N * in_);
    s->call = calls_++;
    dropout(xd, x, N, adapters_[0], s->call);
    x_in = compute_->operand(xd, N, in_, arena);
    s->x_drop = x_in;
  }
  // u = x A^T per part, [N, r] each (row placement: partial sums over TP, reduced with y).
  Tensor u = arena.alloc(Shape{N, R});
  float* tmp = arena.alloc_f32(N * std::max<int64_t>(r, out_));
  for (size_t k = 0; k < adapters_.size(); ++k) {
    const Adapter& a = adapters_[k];
    compute_->linear_forward(tmp, x_in, Weight::of(*a.A), N, in_, r);
    for (int64_t n = 0; n < N; ++n) std::memcpy(u.f32() + n * R + k * r, tmp + n * r, sizeof(float) * static_cast<size_t>(r));
  }
  for (size_t k = 0; k < adapters_.size(); ++k) {
    const Adapter& a = adapters_[k];
    float* uk = arena.alloc_f32(N * r);
    for (int64_t n = 0; n < N; ++n) std::memcpy(uk + n * r, u.f32() + n * R + k * r, sizeof(float) * static_cast<size_t>(r));
    compute_->linear_forward(tmp, compute_->operand(uk, N, r, arena), Weight::of(*a.B), N, r, a.width);
    for (int64_t n = 0; n < N; ++n) {
      float* yr = y + n * out_ + a.col;
      const float* tr = tmp + n * a.width;
      for (int64_t c = 0; c < a.width; ++c) yr[c] += scale_ * tr[c];
    }
  }
  if (s) s->u = u;
}

void Linear::backward(float* dx, const float* dy, const Tensor& dy_op, const Tensor& x, const Saved& s, int64_t N,
                      bool accumulate_dx, Arena& scratch) const {
  compute_->linear_backward(dx, Weight::of(*weight_), dy_op, x, N, in_, out_, accumulate_dx);
  if (adapters_.empty() || !compute_->adapters_on()) return;
  FF_CHECK(!s.u.empty(), "Linear::backward of an adapted layer needs its training forward");
  const int64_t r = lora_.rank, R = r * static_cast<int64_t>(adapters_.size());
  const Tensor& x_in = s.x_drop.empty() ? x : s.x_drop;
  float* dyp = scratch.alloc_f32(N * out_);
  float* du = scratch.alloc_f32(N * r);
  float* dx_lora = dx && !s.x_drop.empty() ? scratch.alloc_f32(N * in_) : nullptr;  // dropout: masked below
  float* uk = scratch.alloc_f32(N * r);
  for (size_t k = 0; k < adapters_.size(); ++k) {
    const Adapter& a = adapters_[k];
    // y_part += scale u B^T:  dB += scale dy_part^T u,  du = scale dy_part B.
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < a.width; ++c) dyp[n * a.width + c] = scale_ * dy[n * out_ + a.col + c];
    for (int64_t n = 0; n < N; ++n)
      std::memcpy(uk + n * r, s.u.f32() + n * R + static_cast<int64_t>(k) * r, sizeof(float) * static_cast<size_t>(r));
    compute_->linear_backward(du, Weight::of(*a.B), compute_->operand(dyp, N, a.width, scratch),
                              compute_->operand(uk, N, r, scratch), N, r, a.width, false);
    // u = x_in A^T:  dA += du^T x_in,  dx += du A (through the dropout mask when there is one).
    float* dxk = dx_lora ? dx_lora : dx;
    const bool acc = dx_lora ? k > 0 : true;
    compute_->linear_backward(dxk, Weight::of(*a.A), compute_->operand(du, N, r, scratch), x_in, N, in_, r, acc);
  }
  if (dx_lora) {
    // dropout(x) = x * mask / (1 - p): its gradient is the same mask and scale, read off x_drop
    // (zero where dropped; x itself can be zero elsewhere, so recompute the mask instead).
    Rng rng(lora_.seed, "lora-dropout:" + adapters_[0].name, s.call);
    const float keep_scale = 1.0f / (1.0f - lora_.dropout);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < in_global_; ++c) {
        const bool keep = rng.uniform() >= lora_.dropout;
        if (c < in_offset_ || c >= in_offset_ + in_) continue;
        const int64_t i = n * in_ + c - in_offset_;
        if (keep) dx[i] += keep_scale * dx_lora[i];
      }
  }
}

}  // namespace ff
