// Normalisations over the last dim. Legend: N rows, D features.
// Statistics (mean, rstd) are fp32 and are returned by forward for backward to use.
#pragma once
#include <cstdint>

namespace ff::cpu {

// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w.           rstd[N] saved.
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, float eps, int64_t N,
                     int64_t D);
// dx[N,D] += (residual-stream contract: the input gradient ACCUMULATES into dx), dw[D] += (skipped
// when dw is null: a frozen gain).
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D);

// LayerNorm with zero-centred gain (Nemotron-4 "LayerNorm1p"):
//   y = (x - mean) * rstd * (1 + gamma) + beta,  rstd = 1/sqrt(var + eps), var biased.
// mean[N], rstd[N] saved. gamma and beta are stored as-is (a checkpoint holds gamma, not 1+gamma).
void layernorm1p_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                         const float* beta, float eps, int64_t N, int64_t D);
// dx += (residual-stream contract), dgamma += , dbeta += (each skipped when null: frozen).
void layernorm1p_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                          const float* gamma, const float* mean, const float* rstd, int64_t N,
                          int64_t D);

// Gated RMSNorm over groups (the Mamba2 mixer's output norm, norm after the gate; specs/methods.md
// §3.2 step 6): with v = y * silu(z), each row's Ch channels split into `groups` contiguous groups
// of Ch / groups channels, RMS taken per group:
//   out[n, k] = v[n, k] * rstd[n, g(k)] * w[k],  rstd = 1 / sqrt(mean_group(v^2) + eps).
// y [N, Ch] contiguous, z [N, Ch] with row stride ldz (0 = Ch); out [N, Ch]; rstd [N, groups] saved.
void gated_rmsnorm_forward(float* out, float* rstd, const float* y, const float* z, const float* w, float eps, int64_t N,
                           int64_t Ch, int64_t groups, int64_t ldz = 0);
// dy [N, Ch] and dz (row stride lddz, 0 = Ch) OVERWRITTEN; dw [Ch] ACCUMULATES (null = frozen).
void gated_rmsnorm_backward(float* dy, float* dz, float* dw, const float* dout, const float* y, const float* z,
                            const float* w, const float* rstd, int64_t N, int64_t Ch, int64_t groups, int64_t ldz = 0,
                            int64_t lddz = 0);

}  // namespace ff::cpu
