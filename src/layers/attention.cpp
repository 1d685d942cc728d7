#include "layers/attention.h"

#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"

namespace ff {

Attention::Attention(ParamStore& store, const std::string& prefix, const ModelConfig& cfg,
                     float init_std, float out_init_std)
    : D_(cfg.d_model),
      Hq_(cfg.num_heads),
      Hkv_(cfg.num_kv_heads),
      dh_(cfg.kv_channels()),
      rope_on_(cfg.position_embedding == PositionEmbedding::rope) {
  if (rope_on_)
    rope_ = cpu::rope_table(cfg.seq_len, static_cast<int64_t>(cfg.rotary_percent * dh_), cfg.rope_base);
  wqkv_ = store.add(prefix + ".q_proj.weight", Shape{Hq_ * dh_, D_}, ParamInit::normal, init_std);
  store.add(prefix + ".k_proj.weight", Shape{Hkv_ * dh_, D_}, ParamInit::normal, init_std);
  store.add(prefix + ".v_proj.weight", Shape{Hkv_ * dh_, D_}, ParamInit::normal, init_std);
  wo_ = store.add(prefix + ".o_proj.weight", Shape{D_, Hq_ * dh_}, ParamInit::normal, out_init_std);
}

namespace {
cpu::AttentionShape shape_of(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t dh) {
  const int64_t ld = (Hq + 2 * Hkv) * dh;
  return {B, S, Hq, Hkv, dh, ld, ld, 1.0f / std::sqrt(static_cast<float>(dh))};
}
}  // namespace

void Attention::forward(Saved& s, float* out, const float* x, const int32_t* positions, int64_t B,
                        int64_t S, Arena& arena) const {
  const int64_t N = B * S, W = qkv_width();
  s.qkv = arena.alloc(Shape{N, W});
  s.o = arena.alloc(Shape{N, Hq_ * dh_});
  s.lse = arena.alloc(Shape{B, Hq_, S});
  float* qkv = s.qkv.f32();
  cpu::linear_forward(qkv, x, wqkv_->value, N, D_, W);
  if (rope_on_) cpu::rope_forward(qkv, positions, rope_, N, Hq_ + Hkv_, dh_, W);  // q and k heads
  const float* q = qkv;
  const float* k = qkv + Hq_ * dh_;
  const float* v = k + Hkv_ * dh_;
  cpu::attention_forward(s.o.f32(), s.lse.f32(), q, k, v, shape_of(B, S, Hq_, Hkv_, dh_));
  cpu::linear_forward(out, s.o.f32(), wo_->value, N, Hq_ * dh_, D_);
}

void Attention::backward(float* dx, const float* dout, const float* x, const int32_t* positions,
                         const Saved& s, int64_t B, int64_t S, Arena& scratch) const {
  const int64_t N = B * S, W = qkv_width();
  float* dO = scratch.alloc_f32(N * Hq_ * dh_);
  float* dqkv = scratch.alloc_f32(N * W);
  cpu::linear_backward(dO, wo_->grad, dout, s.o.f32(), wo_->value, N, Hq_ * dh_, D_, false);
  const float* qkv = s.qkv.f32();
  cpu::attention_backward(dqkv, dqkv + Hq_ * dh_, dqkv + (Hq_ + Hkv_) * dh_, dO, qkv, qkv + Hq_ * dh_,
                          qkv + (Hq_ + Hkv_) * dh_, s.o.f32(), s.lse.f32(), shape_of(B, S, Hq_, Hkv_, dh_));
  if (rope_on_) cpu::rope_backward(dqkv, positions, rope_, N, Hq_ + Hkv_, dh_, W);
  cpu::linear_backward(dx, wqkv_->grad, dqkv, x, wqkv_->value, N, D_, W, false);
}

}  // namespace ff
