// Dense MLP: out = fc2(act(fc1(x))). With SwiGLU, fc1 is gate_proj and up_proj registered
// adjacently so one GEMM computes [gate | up]. Also the shared expert of MoE layers.
// Tensor parallelism splits F: TP rank t holds rows [t F/TP, (t+1) F/TP) of gate_proj and up_proj
// (column-parallel; the rank's fc1 is [gate_t; up_t]) and those columns of down_proj (row-parallel).
// Legend: N rows of the full stream, D width, F hidden (local: F / TP). Input and output hold
// tp.local_rows(N) rows.
#pragma once
#include <string>

#include "core/param.h"
#include "layers/compute.h"
#include "layers/linear.h"
#include "layers/tensor_parallel.h"
#include "layers/model_config.h"

namespace ff {

// The activation function applied between fc1 and fc2, by kind. fc1 width is 2F for SwiGLU.
int64_t fc1_width(Activation act, int64_t F);
void activation_forward(Activation act, float* out, const float* in, int64_t N, int64_t F);
void activation_backward(Activation act, float* din, const float* dout, const float* in, int64_t N, int64_t F);

class Mlp {
 public:
  // prefix e.g. "model.layers.1.mlp"; registers gate_proj+up_proj (SwiGLU) or up_proj, and down_proj.
  Mlp(ParamStore& store, Compute& compute, const std::string& prefix, int64_t D, int64_t F, Activation act,
      float init_std, float out_init_std, TensorParallel tp = {}, const LoraOptions& lora = {});

  struct Saved {
    Tensor x_op;  // [N, D] the region's input, as a GEMM operand
    Tensor h1;    // [N, fc1_width] pre-activation (fp32)
    Tensor act;   // [N, F] the activation, as a GEMM operand
    Linear::Saved fc1_lora, fc2_lora;  // the adapters' activations (LoRA)
  };
  // out[N, D] overwritten.
  void forward(Saved& s, float* out, const float* x, int64_t N, Arena& arena) const;
  // dx[N, D] overwritten, or accumulated when accumulate_dx; parameter gradients accumulate.
  // scratch supplies two [N, fc1_width] buffers.
  void backward(float* dx, const float* dout, const Saved& s, int64_t N, bool accumulate_dx, Arena& scratch) const;

  int64_t hidden() const { return F_; }

 private:
  int64_t D_, F_;  // F_ = hidden width held here
  Activation act_;
  TensorParallel tp_;
  Compute* compute_;
  Linear fc1_;  // column-parallel gate_proj | up_proj (SwiGLU) or up_proj: [fc1_width, D] as one matrix
  Linear fc2_;  // row-parallel down_proj [D, F]
};

}  // namespace ff
