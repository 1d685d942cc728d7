// MLP activations. Legend: N rows, F hidden width. Input gradients are OVERWRITTEN.
#pragma once
#include <cstdint>

namespace ff::cpu {

// SwiGLU on a fused [N, 2F] input laid out per row as [gate (F) | up (F)]:
//   out[n, j] = silu(gate[n, j]) * up[n, j],  silu(a) = a * sigmoid(a).
void swiglu_forward(float* out, const float* in, int64_t N, int64_t F);
void swiglu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F);

// Squared ReLU (Nemotron-4): out = max(u, 0)^2,  d/du = 2 max(u, 0).  in/out [N, F].
void squared_relu_forward(float* out, const float* in, int64_t N, int64_t F);
void squared_relu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F);

// GELU, exact erf form: out = u * Phi(u).  in/out [N, F].
void gelu_forward(float* out, const float* in, int64_t N, int64_t F);
void gelu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F);

}  // namespace ff::cpu
