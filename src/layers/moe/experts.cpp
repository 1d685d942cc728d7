#include "layers/moe/experts.h"

#include "kernels/cpu/gemm.h"
#include "layers/mlp.h"

namespace ff {

Experts::Experts(ParamStore& store, const std::string& prefix, const ModelConfig& cfg, int64_t first,
                 int64_t count, float init_std, float out_init_std, int64_t etp_rank, int64_t etp_size)
    : D_(cfg.d_model), F_(cfg.moe_ffn_hidden / etp_size), W_(fc1_width(cfg.activation, F_)),
      count_(count), act_(cfg.activation) {
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

void Experts::forward(Saved& s, float* out, const float* rows, const float* row_probs,
                      const std::vector<int64_t>& tokens_per_expert, Arena& arena) const {
  int64_t R = 0;
  for (int64_t n : tokens_per_expert) R += n;
  s.h1 = arena.alloc(Shape{R, W_});
  s.act = arena.alloc(Shape{R, F_});
  float* scaled = arena.alloc_f32(R * F_);  // act * prob, the input of fc2
  int64_t start = 0;
  for (int64_t e = 0; e < count_; ++e) {
    const int64_t n = tokens_per_expert[static_cast<size_t>(e)];
    if (n == 0) continue;  // an expert with no tokens is a normal path
    float* h1 = s.h1.f32() + start * W_;
    float* act = s.act.f32() + start * F_;
    float* sc = scaled + start * F_;
    cpu::linear_forward(h1, rows + start * D_, fc1_->value + e * W_ * D_, n, D_, W_);
    activation_forward(act_, act, h1, n, F_);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const float p = row_probs[start + r];
      for (int64_t j = 0; j < F_; ++j) sc[r * F_ + j] = act[r * F_ + j] * p;
    }
    cpu::linear_forward(out + start * D_, sc, fc2_->value + e * D_ * F_, n, F_, D_);
    start += n;
  }
}

void Experts::backward(float* drows, float* drow_probs, const float* dout, const float* rows,
                       const float* row_probs, const Saved& s, const std::vector<int64_t>& tokens_per_expert,
                       Arena& scratch) const {
  int64_t R = 0, maxn = 0;
  for (int64_t n : tokens_per_expert) {
    R += n;
    maxn = std::max(maxn, n);
  }
  float* scaled = scratch.alloc_f32(maxn * F_);
  float* dscaled = scratch.alloc_f32(maxn * F_);
  float* dh1 = scratch.alloc_f32(maxn * W_);
  int64_t start = 0;
  for (int64_t e = 0; e < count_; ++e) {
    const int64_t n = tokens_per_expert[static_cast<size_t>(e)];
    if (n == 0) continue;
    const float* act = s.act.f32() + start * F_;
    const float* p = row_probs + start;
    // Forward: scaled = act * p; out = scaled W2^T.
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < F_; ++j) scaled[r * F_ + j] = act[r * F_ + j] * p[r];
    cpu::linear_backward(dscaled, fc2_->grad + e * D_ * F_, dout + start * D_, scaled, fc2_->value + e * D_ * F_,
                         n, F_, D_, false);
    // dprob[r] = <dscaled[r], act[r]>;  dact = dscaled * p (written over dscaled).
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      double dp = 0;
      for (int64_t j = 0; j < F_; ++j) {
        dp += static_cast<double>(dscaled[r * F_ + j]) * act[r * F_ + j];
        dscaled[r * F_ + j] *= p[r];
      }
      drow_probs[start + r] = static_cast<float>(dp);
    }
    activation_backward(act_, dh1, dscaled, s.h1.f32() + start * W_, n, F_);
    cpu::linear_backward(drows + start * D_, fc1_->grad + e * W_ * D_, dh1, rows + start * D_,
                         fc1_->value + e * W_ * D_, n, D_, W_, false);
    start += n;
  }
}

}  // namespace ff
