// The experts of one MoE layer: E_local MLPs (SwiGLU or squared ReLU / GELU) with their own
// hidden width F, applied to contiguous row segments (tokens_per_expert). Each row's output is
// scaled by its gating prob after the activation (§8): out = fc2(act(fc1(x)) * prob).
// Weights are registered stacked: all fc1 (gate, up per expert) first, then all fc2, so expert e's
// fc1 is fc1_base + e * W * D and its fc2 is fc2_base + e * D * F.
// Expert-tensor parallelism: ETP rank t holds rows [t F/ETP, (t+1) F/ETP) of every gate/up and those
// columns of every down projection, with no collective here: its outputs (and input and prob
// gradients) are partial sums that the dispatcher reduces over ETP.
// Legend: R rows, D width, F expert hidden (local: F / ETP), W = fc1 width (2F for SwiGLU).
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "layers/compute.h"
#include "layers/model_config.h"

namespace ff {

class Experts {
 public:
  // Registers experts [first, first + count) of the layer under prefix + ".experts.{e}".
  Experts(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, int64_t first, int64_t count,
          float init_std, float out_init_std, int64_t etp_rank = 0, int64_t etp_size = 1);

  struct Saved {
    Tensor x_op;    // [R, D] the rows, as a GEMM operand
    Tensor h1;      // [R, W] pre-activation: fp32, or the operand dtype for SwiGLU (fused pass)
    Tensor act;     // [R, F] before the prob scaling (fp32); not kept for SwiGLU (recomputed from h1)
    Tensor scaled;  // [R, F] act * prob, the input of fc2, as a GEMM operand
  };
  // out[R, D] overwritten.
  void forward(Saved& s, float* out, const float* rows, const float* row_probs,
               const std::vector<int64_t>& tokens_per_expert, Arena& arena) const;
  // drows[R, D] and drow_probs[R] overwritten; parameter gradients accumulate.
  void backward(float* drows, float* drow_probs, const float* dout, const float* row_probs, const Saved& s, const std::vector<int64_t>& tokens_per_expert, Arena& scratch) const;

 private:
  int64_t D_, F_, W_, count_;
  Activation act_;
  Compute* compute_;
  Param* fc1_;  // expert 0's first fc1 matrix; the rest follow
  Param* fc2_;
};

}  // namespace ff
