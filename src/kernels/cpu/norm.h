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

}  // namespace ff::cpu
