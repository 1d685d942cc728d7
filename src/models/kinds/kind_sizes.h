// Sizes the layer kinds' descriptors share (models/layer_kind.h): parameter counts of dense MLP
// regions and LoRA adapters, and the activation rows of one micro-batch on one rank.
#pragma once
#include <cstdint>

#include "layers/model_config.h"
#include "models/layer_kind.h"

namespace ff::kinds {

constexpr double kFloat = 4.0;  // bytes of an fp32 value

// fc1's width for hidden width F: gate and up (SwiGLU) or up alone.
inline int64_t fc1(const ModelConfig& c, int64_t F) { return c.activation == Activation::swiglu ? 2 * F : F; }
inline int64_t mlp_params(const ModelConfig& c, int64_t F) { return c.d_model * fc1(c, F) + F * c.d_model; }

// Parameters of the LoRA adapters of one linear in -> out: r (in + out) if lora_targets names it.
inline int64_t lora_params(const ModelConfig& c, const char* target, int64_t in, int64_t out) {
  return c.lora_rank > 0 && c.lora_adapts(target) ? c.lora_rank * (in + out) : 0;
}
// A dense MLP's (or the shared expert's) adapters, hidden width F.
inline int64_t mlp_lora_params(const ModelConfig& c, int64_t F) {
  const int64_t D = c.d_model;
  return (c.activation == Activation::swiglu ? lora_params(c, "gate_proj", D, F) : 0) + lora_params(c, "up_proj", D, F) +
         lora_params(c, "down_proj", F, D);
}

// One micro-batch of B sequences on one rank.
struct Rows {
  double D, T;      // width, TP size
  double N;         // rows of a tensor-parallel region (all the sequences' rows held here)
  double Ns;        // rows of the residual stream (N / TP under sequence parallelism)
  double gathered;  // values of a region's gathered input under SP (N D), else 0
  double partial;   // values of a row-parallel GEMM's partial sums under TP (N D), else 0
  double copy;      // bytes per value of a GEMM operand copy: 2 under bf16, 0 under fp32 (views)
  Rows(const ModelConfig& c, const ParallelConfig& p, int64_t B)
      : D(static_cast<double>(c.d_model)), T(static_cast<double>(p.tp)),
        N(static_cast<double>(B * c.seq_len / p.cp)), Ns(p.sequence_parallel ? N / T : N),
        gathered(p.sequence_parallel && p.tp > 1 ? N * D : 0), partial(p.tp > 1 ? N * D : 0),
        copy(c.precision == Precision::bf16 ? 2.0 : 0.0) {}
};

// Saved bytes of a dense MLP region of hidden width F (an MLP layer, the shared expert): fc1's
// fp32 output, the fp32 activation (none under bf16 SwiGLU, which writes its bf16 operand
// directly) and the operand copies of the input and the activation.
inline double mlp_region_bytes(const ModelConfig& c, const Rows& r, int64_t F) {
  const bool fused = c.precision == Precision::bf16 && c.activation == Activation::swiglu;
  return (r.gathered + r.partial + r.N * static_cast<double>(fc1(c, F) + (fused ? 0 : F)) / r.T) * kFloat +
         (r.N * r.D + r.N * static_cast<double>(F) / r.T) * r.copy;
}

// A tensor-parallel region's collectives, forward and backward: entering and leaving move the
// stream once each way (all-reduce, or all-gather + reduce-scatter under SP: the same ring bytes).
inline LayerTraffic tp_region_traffic(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  const Rows r(c, p, B);
  if (p.tp == 1) return {};
  return {2 * ring_bytes(r.N * r.D * kFloat, r.T), 2 * 2 * (r.T - 1)};
}

inline LayerTraffic operator+(LayerTraffic a, LayerTraffic b) { return {a.bytes + b.bytes, a.steps + b.steps}; }

}  // namespace ff::kinds
