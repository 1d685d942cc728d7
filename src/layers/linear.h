// Linear layers: y = x W^T with W [out, in] held as this rank's slice by its placement
// (specs/parallelism-and-moe.md §2):
//   plain   whole on every rank;
//   column  out split over TP: rank t holds rows [t out/TP, (t+1) out/TP); x whole, y its columns;
//   row     in split over TP: rank t holds columns [t in/TP, ...); x its columns, y a partial sum
//           that the caller's region exit reduces.
// One Linear may fuse parts side by side along out (q, k, v; gate, up): each part is its own
// parameter (own name, own global shape), registered adjacently, so the rank's parts form one
// [sum of local outs, in] matrix and one GEMM.
//
// The adapter hook (LoRA, specs/methods.md §6.7): a part may carry A [r, in] and B [out, r],
// adding (alpha / r) dropout(x) A^T B^T to its output; B starts at zero, so a fresh adapter leaves
// the layer's output unchanged. Column placement keeps A whole on every TP rank and slices B with
// the part; row placement slices A with W's columns and keeps B whole. Either way the whole factor
// is the same on every TP rank and its gradient there is a partial sum (Param::tp_partial_grad).
// Dropout (training only) draws one mask per forward over the whole input width from
// Rng(seed, "lora-dropout:" + name, call), the same on every rank. With the Compute's adapters
// switched off (Compute::set_adapters) the layer is its base alone, forward and backward.
// Legend: N rows, in/out local sizes, r adapter rank.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/param.h"
#include "layers/compute.h"
#include "layers/tensor_parallel.h"

namespace ff {

enum class Placement : uint8_t { plain, column, row };

struct LoraOptions {
  int64_t rank = 0;  // 0: no adapters
  float alpha = 16;
  float dropout = 0;
  uint64_t seed = 0;
  // projection names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; the routed
  // experts' experts.gate_proj, experts.up_proj, experts.down_proj, or experts for all three
  std::vector<std::string> targets;
  bool adapts(const std::string& projection) const { return rank > 0 && lora_targets_name(targets, projection); }
};

// The adapters a model config asks for (its lora_* fields), with the model's seed.
inline LoraOptions lora_options(const ModelConfig& c, uint64_t seed) {
  return {c.lora_rank, static_cast<float>(c.lora_alpha), static_cast<float>(c.lora_dropout), seed, c.lora_target_list()};
}

// Adapter parameters are named "<projection>.lora_A.weight" and "<projection>.lora_B.weight".
inline bool is_adapter_name(const std::string& name) {
  return name.find(".lora_A.weight") != std::string::npos || name.find(".lora_B.weight") != std::string::npos;
}

struct LinearPart {
  std::string name;  // e.g. "model.layers.0.self_attn.q_proj" (".weight" is added)
  int64_t out;       // global rows of this part
  bool adapted;      // carries a LoRA adapter
};

class Linear {
 public:
  // in: the global input width.
  Linear(ParamStore& store, Compute& compute, Placement placement, TensorParallel tp, int64_t in,
         const std::vector<LinearPart>& parts, float init_std, const LoraOptions& lora = {});

  struct Saved {
    Tensor u;       // [N, r] per adapted part, side by side: dropout(x) A^T
    Tensor x_drop;  // [N, in] the adapters' dropped-out input (dropout > 0 only), as an operand
    uint64_t call = 0;  // the dropout mask's index in its stream
  };
  // y[N, out] OVERWRITTEN from the operand x[N, in]. training: apply dropout and keep what the
  // adapters' backward needs in s (s may be null when not training).
  void forward(float* y, const Tensor& x, int64_t N, Saved* s, Arena& arena) const;
  // dx[N, in] overwritten (or accumulated; null: skipped); dy[N, out] fp32 and dy_op its operand.
  // The weight's and the adapters' gradients accumulate (none for frozen parameters).
  void backward(float* dx, const float* dy, const Tensor& dy_op, const Tensor& x, const Saved& s, int64_t N,
                bool accumulate_dx, Arena& scratch) const;

  int64_t in() const { return in_; }    // local
  int64_t out() const { return out_; }  // local, all parts
  Param* weight() const { return weight_; }
  bool adapted() const { return !adapters_.empty(); }

 private:
  struct Adapter {
    Param* A = nullptr;  // [r, in] local
    Param* B = nullptr;  // [out_part, r] local
    int64_t col = 0, width = 0;  // the part's columns of y
    std::string name;
  };
  void dropout(float* x_drop, const Tensor& x, int64_t N, const Adapter& a, uint64_t call) const;

  Compute* compute_;
  Placement placement_;
  TensorParallel tp_;
  int64_t in_ = 0, in_global_ = 0, in_offset_ = 0, out_ = 0;
  Param* weight_ = nullptr;
  std::vector<Adapter> adapters_;
  LoraOptions lora_;
  float scale_ = 0;
  mutable uint64_t calls_ = 0;  // forwards with dropout so far (the mask stream)
};

}  // namespace ff
