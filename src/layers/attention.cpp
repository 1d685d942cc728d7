#include "layers/attention.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <omp.h>

#include "kernels/cpu/attention.h"

namespace ff {

Attention::Attention(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg,
                     float init_std, float out_init_std, TensorParallel tp, const Communicator* cp, bool cp_ring,
                     const LoraOptions& lora)
    : D_(cfg.d_model),
      Hq_(cfg.num_heads / tp.size()),
      Hkv_(cfg.num_kv_heads / tp.size()),
      dh_(cfg.kv_channels()),
      tp_(tp),
      compute_(&compute),
      cp_(cp && cp->size() > 1 ? cp : nullptr),
      cp_ring_(cp_ring),
      rope_on_(cfg.position_embedding == PositionEmbedding::rope),
      qkv_(store, compute, Placement::column, tp, cfg.d_model,
           {{prefix + ".q_proj", cfg.num_heads * cfg.kv_channels(), lora.adapts("q_proj")},
            {prefix + ".k_proj", cfg.num_kv_heads * cfg.kv_channels(), lora.adapts("k_proj")},
            {prefix + ".v_proj", cfg.num_kv_heads * cfg.kv_channels(), lora.adapts("v_proj")}},
           init_std, lora),
      o_(store, compute, Placement::row, tp, cfg.num_heads * cfg.kv_channels(),
         {{prefix + ".o_proj", cfg.d_model, lora.adapts("o_proj")}}, out_init_std, lora) {
  FF_CHECK(cfg.num_heads % tp.size() == 0 && cfg.num_kv_heads % tp.size() == 0,
           "model.num_heads = %lld and num_kv_heads = %lld must be divisible by parallel.tp = %d",
           (long long)cfg.num_heads, (long long)cfg.num_kv_heads, tp.size());
  if (rope_on_)
    rope_ = cpu::rope_table(cfg.seq_len, static_cast<int64_t>(cfg.rotary_percent * dh_), cfg.rope_base);
}

namespace {
cpu::AttentionShape shape_of(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t dh, bool bf16) {
  const int64_t ld = (Hq + 2 * Hkv) * dh;
  cpu::AttentionShape s{B, S, Hq, Hkv, dh, ld, ld, 1.0f / std::sqrt(static_cast<float>(dh))};
  s.bf16 = bf16;  // the block products in the model's compute precision
  return s;
}
// The kernel's scratch, from the arena (so the step allocates nothing after the first).
float* workspace(const cpu::AttentionShape& sh, Arena& arena) {
  return arena.alloc_f32(cpu::attention_workspace_floats(sh, omp_get_max_threads()));
}
// Packed sequences: the rows of sequence b whose positions restart at 0 begin a new segment (an
// example of its own: it attends only within itself). [begin, end) row ranges over all B * S rows;
// one per sequence when nothing is packed.
std::vector<std::pair<int64_t, int64_t>> segments(const int32_t* positions, int64_t B, int64_t S) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t b = 0; b < B; ++b) {
    int64_t start = b * S;
    for (int64_t r = b * S + 1; r < (b + 1) * S; ++r)
      if (positions[r] == 0) {
        out.push_back({start, r});
        start = r;
      }
    out.push_back({start, (b + 1) * S});
  }
  return out;
}
}  // namespace

void Attention::forward(Saved& s, float* out, const float* x, const int32_t* positions, int64_t B,
                        int64_t S, Arena& arena) const {
  const int64_t N = B * S, W = qkv_width();
  s.x_op = compute_->operand(tp_.enter(x, N, D_, arena), N, D_, arena);
  s.qkv = arena.alloc(Shape{N, W});
  s.o = arena.alloc(Shape{N, Hq_ * dh_});
  s.lse = arena.alloc(Shape{B, Hq_, S});
  float* qkv = s.qkv.f32();
  qkv_.forward(qkv, s.x_op, N, &s.qkv_lora, arena);
  if (rope_on_) cpu::rope_forward(qkv, positions, rope_, N, Hq_ + Hkv_, dh_, W);  // q and k heads
  const float* q = qkv;
  const float* k = qkv + Hq_ * dh_;
  const float* v = k + Hkv_ * dh_;
  if (cp_)
    cp_attention_forward(s.cp, s.o.f32(), qkv, {B, S, Hq_, Hkv_, dh_, 1.0f / std::sqrt(static_cast<float>(dh_)), cp_ring_, compute_->bf16()}, *cp_,
                         arena);
  else {
    const cpu::AttentionShape sh = shape_of(B, S, Hq_, Hkv_, dh_, compute_->bf16());
    float* ws = workspace(sh, arena);
    const auto segs = segments(positions, B, S);
    if (static_cast<int64_t>(segs.size()) == B) {
      cpu::attention_forward(s.o.f32(), s.lse.f32(), q, k, v, sh, ws);
    } else {  // packed: each segment its own causal sequence (its lse at Hq x its first row)
      for (const auto& [r0, r1] : segs) {
        const cpu::AttentionShape seg = shape_of(1, r1 - r0, Hq_, Hkv_, dh_, compute_->bf16());
        cpu::attention_forward(s.o.f32() + r0 * Hq_ * dh_, s.lse.f32() + r0 * Hq_, q + r0 * W, k + r0 * W, v + r0 * W,
                               seg, ws);
      }
    }
  }
  float* partial = tp_.active() ? arena.alloc_f32(N * D_) : out;  // row-parallel: partial sums
  s.o_op = compute_->operand(s.o.f32(), N, Hq_ * dh_, arena);
  o_.forward(partial, s.o_op, N, &s.o_lora, arena);
  tp_.leave(out, partial, N, D_);
}

Attention::KvCache Attention::new_cache(int64_t B, int64_t capacity) const {
  FF_CHECK(!rope_on_ || capacity <= rope_.max_pos, "a KV cache of %lld positions is longer than model.seq_len = %lld",
           (long long)capacity, (long long)rope_.max_pos);
  KvCache c;
  c.B = B;
  c.capacity = capacity;
  c.k.assign(static_cast<size_t>(B * capacity * Hkv_ * dh_), 0.0f);
  c.v.assign(c.k.size(), 0.0f);
  return c;
}

void Attention::forward_cached(float* out, const float* x, int64_t B, int64_t T, int64_t start, KvCache& cache,
                               Arena& scratch) const {
  FF_CHECK(cp_ == nullptr, "the inference path runs without context parallelism (parallel.cp = 1)");
  FF_CHECK(B == cache.B && start >= 0 && start + T <= cache.capacity,
           "KV cache of %lld sequences x %lld positions cannot take positions [%lld, %lld) of %lld sequences",
           (long long)cache.B, (long long)cache.capacity, (long long)start, (long long)(start + T), (long long)B);
  const int64_t N = B * T, W = qkv_width(), kvw = Hkv_ * dh_;
  const Tensor x_op = compute_->operand(tp_.enter(x, N, D_, scratch), N, D_, scratch);
  float* qkv = scratch.alloc_f32(N * W);
  qkv_.forward(qkv, x_op, N, nullptr, scratch);
  auto* positions = reinterpret_cast<int32_t*>(scratch.alloc_f32(N));  // 4-byte slots
  for (int64_t r = 0; r < N; ++r) positions[r] = static_cast<int32_t>(start + r % T);
  if (rope_on_) cpu::rope_forward(qkv, positions, rope_, N, Hq_ + Hkv_, dh_, W);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* row = qkv + (b * T + t) * W + Hq_ * dh_;
      const size_t at = static_cast<size_t>((b * cache.capacity + start + t) * kvw);
      std::copy(row, row + kvw, cache.k.begin() + static_cast<std::ptrdiff_t>(at));
      std::copy(row + kvw, row + 2 * kvw, cache.v.begin() + static_cast<std::ptrdiff_t>(at));
    }
  // Per sequence: T query rows at positions start.., keys at 0 .. start + T - 1 (the kernel's
  // offset form, as context parallelism uses it).
  float* o = scratch.alloc_f32(N * Hq_ * dh_);
  float* lse = scratch.alloc_f32(Hq_ * T);
  cpu::AttentionShape sh = shape_of(1, T, Hq_, Hkv_, dh_, compute_->bf16());
  sh.ld_kv = kvw;
  sh.S_kv = start + T;
  sh.q_offset = start;
  float* ws = workspace(sh, scratch);
  for (int64_t b = 0; b < B; ++b) {
    const float* kb = cache.k.data() + b * cache.capacity * kvw;
    const float* vb = cache.v.data() + b * cache.capacity * kvw;
    cpu::attention_forward(o + b * T * Hq_ * dh_, lse, qkv + b * T * W, kb, vb, sh, ws);
  }
  float* partial = tp_.active() ? scratch.alloc_f32(N * D_) : out;
  o_.forward(partial, compute_->operand(o, N, Hq_ * dh_, scratch), N, nullptr, scratch);
  tp_.leave(out, partial, N, D_);
}

void Attention::backward(float* dx, const float* dout, const int32_t* positions, const Saved& s, int64_t B,
                         int64_t S, Arena& scratch) const {
  const int64_t N = B * S, W = qkv_width();
  float* dO = scratch.alloc_f32(N * Hq_ * dh_);
  float* dqkv = scratch.alloc_f32(N * W);
  const float* dout_full = tp_.leave_backward(dout, N, D_, scratch);
  o_.backward(dO, dout_full, compute_->operand(dout_full, N, D_, scratch), s.o_op, s.o_lora, N, false, scratch);
  const float* qkv = s.qkv.f32();
  if (cp_)
    cp_attention_backward(dqkv, dO, s.cp, {B, S, Hq_, Hkv_, dh_, 1.0f / std::sqrt(static_cast<float>(dh_)), cp_ring_, compute_->bf16()}, *cp_,
                          scratch);
  else {
    const cpu::AttentionShape sh = shape_of(B, S, Hq_, Hkv_, dh_, compute_->bf16());
    float* ws = workspace(sh, scratch);
    const auto segs = segments(positions, B, S);
    const int64_t ko = Hq_ * dh_, vo = (Hq_ + Hkv_) * dh_;
    if (static_cast<int64_t>(segs.size()) == B) {
      cpu::attention_backward(dqkv, dqkv + ko, dqkv + vo, dO, qkv, qkv + ko, qkv + vo, s.o.f32(), s.lse.f32(), sh, ws);
    } else {
      for (const auto& [r0, r1] : segs) {
        const cpu::AttentionShape seg = shape_of(1, r1 - r0, Hq_, Hkv_, dh_, compute_->bf16());
        const int64_t q0 = r0 * W, o0 = r0 * Hq_ * dh_;
        cpu::attention_backward(dqkv + q0, dqkv + q0 + ko, dqkv + q0 + vo, dO + o0, qkv + q0, qkv + q0 + ko,
                                qkv + q0 + vo, s.o.f32() + o0, s.lse.f32() + r0 * Hq_, seg, ws);
      }
    }
  }
  if (rope_on_) cpu::rope_backward(dqkv, positions, rope_, N, Hq_ + Hkv_, dh_, W);
  float* dx_full = tp_.active() ? scratch.alloc_f32(N * D_) : dx;
  qkv_.backward(dx_full, dqkv, compute_->operand(dqkv, N, W, scratch), s.x_op, s.qkv_lora, N, false, scratch);
  tp_.enter_backward(dx, dx_full, N, D_, false, scratch);
}

}  // namespace ff
