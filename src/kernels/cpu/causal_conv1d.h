// Depthwise causal conv1d with SiLU (the Mamba2 mixer's convolution over x | B | C; specs/
// methods.md §3.2 step 2): per sequence of L positions and channel k, with zero left padding,
//   u[t, k] = bias[k] + sum_{j=0..K-1} w[k, j] in[t - (K-1) + j, k],   out = silu(u).
// Legend: Bs sequences, L positions, Ch channels, K kernel width. in [Bs*L, Ch] has row stride
// ld (0 = Ch: it is usually a slice of in_proj's wider output); out, u [Bs*L, Ch] contiguous;
// w [Ch, K], bias [Ch].
#pragma once
#include <cstdint>

namespace ff::cpu {

// u (the pre-activation, saved for backward; may be null) and out = silu(u).
void causal_conv1d_silu_forward(float* out, float* u, const float* in, const float* w, const float* bias,
                                int64_t Bs, int64_t L, int64_t Ch, int64_t K, int64_t ld = 0);
// din [Bs*L, Ch] OVERWRITTEN with row stride ld_din (0 = Ch); dw [Ch, K] and dbias [Ch]
// ACCUMULATE (null = frozen). u: the saved pre-activation.
void causal_conv1d_silu_backward(float* din, float* dw, float* dbias, const float* dout, const float* u,
                                 const float* in, const float* w, int64_t Bs, int64_t L, int64_t Ch, int64_t K,
                                 int64_t ld = 0, int64_t ld_din = 0);

// One decode step for Bs sequences: state [Bs, Ch, K-1] holds the last K-1 inputs of each
// channel (oldest first) and is shifted to take in [Bs, Ch] (row stride ld); out [Bs, Ch] = the
// forward's output at that position.
void causal_conv1d_silu_step(float* out, float* state, const float* in, const float* w, const float* bias, int64_t Bs,
                             int64_t Ch, int64_t K, int64_t ld = 0);
// The conv state after a full-sequence forward (prefill): the last K-1 inputs of each sequence
// (zeros before position 0), written to state [Bs, Ch, K-1].
void causal_conv1d_final_state(float* state, const float* in, int64_t Bs, int64_t L, int64_t Ch, int64_t K,
                               int64_t ld = 0);

}  // namespace ff::cpu
