// MLP activations. Legend: N rows, F hidden width. Input gradients are OVERWRITTEN.
#pragma once
#include <cstdint>

#include "core/bf16.h"

namespace ff::cpu {

// SwiGLU on a fused [N, 2F] input laid out per row as [gate (F) | up (F)]:
//   out[n, j] = silu(gate[n, j]) * up[n, j],  silu(a) = a * sigmoid(a).
void swiglu_forward(float* out, const float* in, int64_t N, int64_t F);
void swiglu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F);

// The experts' SwiGLU with the gating prob and the cast to the next GEMM's operand dtype fused
// into one pass (the activation itself is never stored; backward recomputes it from `in`):
//   forward:  out[n, j] = silu(gate[n, j]) up[n, j] p[n], written to out_f32 or out_bf16 (the
//             other null).
//   backward: dp[n] = sum_j dout[n, j] silu(gate) up (overwritten); with d = dout[n, j] p[n] the
//             gate/up gradients of swiglu_backward, written to din_f32 or din_bf16 [N, 2F].
// `in` is fp32, or bf16 (the GEMM's bf16 output under bf16 compute). The forward's p may be null
// (no scaling: the dense MLP's SwiGLU cast straight to its bf16 operand).
void swiglu_scaled_forward(float* out_f32, bf16_t* out_bf16, const float* in, const float* p, int64_t N, int64_t F);
void swiglu_scaled_forward(float* out_f32, bf16_t* out_bf16, const bf16_t* in, const float* p, int64_t N, int64_t F);
void swiglu_scaled_backward(float* dp, float* din_f32, bf16_t* din_bf16, const float* dout, const float* in,
                            const float* p, int64_t N, int64_t F);
void swiglu_scaled_backward(float* dp, float* din_f32, bf16_t* din_bf16, const float* dout, const bf16_t* in,
                            const float* p, int64_t N, int64_t F);

// Squared ReLU (Nemotron-4): out = max(u, 0)^2,  d/du = 2 max(u, 0).  in/out [N, F].
void squared_relu_forward(float* out, const float* in, int64_t N, int64_t F);
void squared_relu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F);

// GELU, exact erf form: out = u * Phi(u).  in/out [N, F].
void gelu_forward(float* out, const float* in, int64_t N, int64_t F);
void gelu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F);

}  // namespace ff::cpu
