// The experts of one MoE layer: E_local MLPs (SwiGLU or squared ReLU / GELU) with their own
// hidden width F, applied to contiguous row segments (tokens_per_expert). Each row's output is
// scaled by its gating prob after the activation (§8): out = fc2(act(fc1(x)) * prob).
// Weights are registered stacked: all fc1 (gate, up per expert) first, then all fc2, so expert e's
// fc1 is fc1_base + e * W * D and its fc2 is fc2_base + e * D * F.
// Expert-tensor parallelism: ETP rank t holds rows [t F/ETP, (t+1) F/ETP) of every gate/up and those
// columns of every down projection, with no collective here: its outputs (and input and prob
// gradients) are partial sums that the dispatcher reduces over ETP.
//
// LoRA (lora_targets experts.gate_proj / experts.up_proj / experts.down_proj, or experts): each
// local expert e of an adapted projection carries A_e [r, in] and B_e [out, r], named
// "<prefix>.experts.{e}.<proj>.lora_A.weight" / ".lora_B.weight", and per segment
//   u = x A_e^T [R_e, r],  y += s u B_e^T,  s = alpha / r
// adds to h1 before the activation (gate, up) or to out (down), so merging W + s B A is exact.
// The adapters are registered after all the base weights (which stay stacked), stacked the same
// way: all A of a projection, then all B. Under ETP they mirror Linear: gate/up (rows split) keep
// A whole and slice B's rows; down (columns split) slices A's columns and keeps B whole. The whole
// factor's gradient is then a partial sum over ETP (Param::etp_partial_grad) and counted once
// (replica on ETP ranks > 0). No dropout (refused by ModelConfig::validate: the rows' order
// depends on the layout). With the Compute's adapters off the experts are their base alone.
// Legend: R rows, D width, F expert hidden (local: F / ETP), W = fc1 width (2F for SwiGLU), r rank.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "layers/compute.h"
#include "layers/linear.h"
#include "layers/model_config.h"

namespace ff {

class Experts {
 public:
  // Registers experts [first, first + count) of the layer under prefix + ".experts.{e}".
  Experts(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, int64_t first, int64_t count,
          float init_std, float out_init_std, int64_t etp_rank = 0, int64_t etp_size = 1, const LoraOptions& lora = {});

  struct Saved {
    Tensor x_op;    // [R, D] the rows, as a GEMM operand
    Tensor h1;      // [R, W] pre-activation: fp32, or the operand dtype for SwiGLU (fused pass) without gate/up adapters
    Tensor act;     // [R, F] before the prob scaling (fp32); not kept for SwiGLU (recomputed from h1)
    Tensor scaled;  // [R, F] act * prob, the input of fc2, as a GEMM operand
    Tensor u[3];    // [R, r] fp32 per adapted projection (gate, up, down): x A_e^T
  };
  // out[R, D] overwritten.
  void forward(Saved& s, float* out, const float* rows, const float* row_probs,
               const std::vector<int64_t>& tokens_per_expert, Arena& arena) const;
  // drows[R, D] and drow_probs[R] overwritten; parameter gradients accumulate.
  void backward(float* drows, float* drow_probs, const float* dout, const float* row_probs, const Saved& s, const std::vector<int64_t>& tokens_per_expert, Arena& scratch) const;

 private:
  // One projection's adapters over the local experts, stacked: expert e's A at A + e * r * in,
  // its B at B + e * out * r (local sizes).
  struct Adapter {
    Param* A = nullptr;  // null: the projection is not adapted
    Param* B = nullptr;
    int64_t in = 0, out = 0;  // local widths of the projection
    int64_t col = 0;          // its first column in h1 (gate 0, up F for SwiGLU) or in out (down 0)
  };
  enum { kGate = 0, kUp = 1, kDown = 2 };
  // Projection k's adapters act in this pass: it has them and the Compute's adapters are on (off:
  // the base alone, forward and backward; Compute::set_adapters).
  bool acting(int k) const { return adapters_[k].A != nullptr && compute_->adapters_on(); }
  void add_adapters(ParamStore& store, const std::string& prefix, const char* proj, int64_t first, Adapter& a,
                    bool split_out, int64_t in_global, int64_t out_global, int64_t etp_rank, int64_t etp_size);
  // y[:, a.col : a.col + a.out] += s (x A_e^T) B_e^T per segment (y [R, y_cols] fp32), u [R, r] kept.
  void adapter_forward(float* y, int64_t y_cols, Tensor& u, const Adapter& a, const Tensor& x,
                       const std::vector<int64_t>& counts, int64_t R, Arena& arena) const;
  // From dy[:, a.col : a.col + a.out] (dy [R, dy_cols] fp32): dB_e += s dy^T u, du = s dy B_e,
  // dA_e += du^T x, dx += du A_e (dx [R, in] fp32).
  void adapter_backward(float* dx, const float* dy, int64_t dy_cols, const Tensor& u, const Adapter& a, const Tensor& x,
                        const std::vector<int64_t>& counts, int64_t R, Arena& scratch) const;
  // The grouped GEMMs read expert e's weights at a fixed stride: each stack (fc1, fc2, each
  // factor) must lie adjacent in the store's buffers, gradients too (a train.freeze glob that
  // splits a layer's experts would break that).
  void check_stacked() const;

  int64_t D_, F_, W_, count_;
  Activation act_;
  Compute* compute_;
  Param* fc1_;  // expert 0's first fc1 matrix; the rest follow
  Param* fc2_;
  Adapter adapters_[3];  // gate, up, down
  std::vector<std::vector<Param*>> stacks_;  // the parameters of each stack, in order
  int64_t r_ = 0;
  float scale_ = 0;  // alpha / r
};

}  // namespace ff
