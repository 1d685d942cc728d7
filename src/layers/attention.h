// Self-attention with GQA and (partial) RoPE. q_proj, k_proj and v_proj are registered adjacently
// so one GEMM gives the fused row [q (Hq*dh) | k (Hkv*dh) | v (Hkv*dh)].
// Tensor parallelism splits the heads: TP rank t holds query heads [t Hq/TP, (t+1) Hq/TP) and the
// matching KV heads (column-parallel q/k/v), and the same columns of o_proj (row-parallel).
// Legend: B sequences, S positions, N = B*S tokens, D width, Hq/Hkv heads (local: divided by
// TP), dh head dim. The input and output hold tp.local_rows(N) rows.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/cpu/rope.h"
#include "layers/compute.h"
#include "layers/context_parallel.h"
#include "layers/linear.h"
#include "layers/tensor_parallel.h"
#include "layers/model_config.h"

namespace ff {

class Attention {
 public:
  Attention(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, float init_std,
            float out_init_std, TensorParallel tp = {}, const Communicator* cp = nullptr, bool cp_ring = false,
            const LoraOptions& lora = {});

  struct Saved {
    Tensor x_op;  // [N, D] the region's input (the gathered stream under SP), as a GEMM operand
    Tensor qkv;   // [N, (Hq + 2 Hkv) dh], after RoPE
    Tensor o;     // [N, Hq dh] attention output before o_proj (fp32)
    Tensor o_op;  // o as a GEMM operand
    Tensor lse;  // [B, Hq, S]
    CpAttentionSaved cp;  // context parallelism: gathered K/V and the two query chunks
    Linear::Saved qkv_lora, o_lora;  // the adapters' activations (LoRA)
  };
  // out[N, D] overwritten. positions[N] are the RoPE positions of the rows. With context
  // parallelism S is the local length (two chunks of each sequence, see context_parallel.h).
  void forward(Saved& s, float* out, const float* x, const int32_t* positions, int64_t B, int64_t S,
               Arena& arena) const;
  // The inference path's keys and values of B sequences, this rank's KV heads (after RoPE):
  // k and v [B, capacity, Hkv dh] each; the first `length` positions of every sequence are filled.
  struct KvCache {
    std::vector<float> k, v;
    int64_t B = 0, capacity = 0;
  };
  KvCache new_cache(int64_t B, int64_t capacity) const;
  // Inference: rows b T + t (t < T) of x are the new tokens of sequence b at positions start + t;
  // their keys and values are written into the cache at those positions and every query attends
  // to the cache's positions up to its own. Saves nothing; out[N, D] overwritten (N = B T rows of
  // the stream; this rank's tp.local_rows(N) of them in x and out, as in forward).
  void forward_cached(float* out, const float* x, int64_t B, int64_t T, int64_t start, KvCache& cache,
                      Arena& scratch) const;
  // dx[N, D] overwritten; parameter gradients accumulate.
  void backward(float* dx, const float* dout, const int32_t* positions, const Saved& s, int64_t B, int64_t S,
                Arena& scratch) const;

 private:
  int64_t D_, Hq_, Hkv_, dh_;  // heads held here
  TensorParallel tp_;
  Compute* compute_;
  const Communicator* cp_;  // null or one rank: no context parallelism
  bool cp_ring_;
  bool rope_on_;
  cpu::RopeTable rope_;
  Linear qkv_;  // column-parallel q_proj | k_proj | v_proj: [(Hq + 2 Hkv) dh, D] as one matrix
  Linear o_;    // row-parallel o_proj [D, Hq dh]
  int64_t qkv_width() const { return (Hq_ + 2 * Hkv_) * dh_; }
};

}  // namespace ff
