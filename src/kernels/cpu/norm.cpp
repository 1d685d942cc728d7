#include "kernels/cpu/norm.h"

#include <cmath>

namespace ff::cpu {
namespace {

// Parameter gradients are sums over rows. Rather than per-thread copies and a reduction, each
// thread owns a block of feature columns and walks every row in order: race-free, deterministic.
constexpr int64_t kColBlock = 64;
inline int64_t col_blocks(int64_t D) { return (D + kColBlock - 1) / kColBlock; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// RMSNorm

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, float eps, int64_t N,
                     int64_t D) {
  // r = 1 / sqrt(mean(x^2) + eps);  y = x * r * w.
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * D;
    float* yr = y + n * D;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += double(xr[d]) * double(xr[d]);
    const float r = static_cast<float>(1.0 / std::sqrt(ss / double(D) + double(eps)));
    rstd[n] = r;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * r * w[d];
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D) {
  // forward: y_i = x_i r w_i,  r = (mean_j x_j^2 + eps)^(-1/2),  dr/dx_i = -r^3 x_i / D.
  //   dx_i += r w_i dy_i - (r^3 / D) x_i sum_j dy_j w_j x_j
  //   dw_i += sum_rows dy_i x_i r
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * D;
    const float* g = dy + n * D;
    float* dxr = dx + n * D;
    const float r = rstd[n];
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += double(g[d]) * double(w[d]) * double(xr[d]);
    const float c = static_cast<float>(dot * double(r) * double(r) * double(r) / double(D));
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dxr[d] += r * w[d] * g[d] - c * xr[d];
  }
  if (!dw) return;  // a frozen gain
  const int64_t nb = col_blocks(D);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t d0 = b * kColBlock, d1 = d0 + kColBlock < D ? d0 + kColBlock : D;
    double acc[kColBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = x + n * D;
      const float* g = dy + n * D;
      const float r = rstd[n];
      for (int64_t d = d0; d < d1; ++d) acc[d - d0] += double(g[d] * xr[d] * r);
    }
    for (int64_t d = d0; d < d1; ++d) dw[d] += static_cast<float>(acc[d - d0]);
  }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm1p

void layernorm1p_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                         const float* beta, float eps, int64_t N, int64_t D) {
  // mu = mean(x);  var = mean((x - mu)^2) (biased);  r = 1 / sqrt(var + eps)
  // y = (x - mu) r (1 + gamma) + beta.  Two passes over the row: no cancellation in var.
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * D;
    float* yr = y + n * D;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < D; ++d) s += xr[d];
    const double mu = s / double(D);
    double v = 0.0;
#pragma omp simd reduction(+ : v)
    for (int64_t d = 0; d < D; ++d) v += (double(xr[d]) - mu) * (double(xr[d]) - mu);
    const float m = static_cast<float>(mu);
    const float r = static_cast<float>(1.0 / std::sqrt(v / double(D) + double(eps)));
    mean[n] = m;
    rstd[n] = r;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] - m) * r * (1.0f + gamma[d]) + beta[d];
  }
}

void layernorm1p_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                          const float* gamma, const float* mean, const float* rstd, int64_t N,
                          int64_t D) {
  // forward: y = xhat (1 + gamma) + beta,  xhat = (x - mu) r.  With g = dy (1 + gamma):
  //   dx += r (g - mean(g) - xhat mean(g xhat))          (the usual LayerNorm input gradient)
  //   dgamma += sum_rows dy xhat,  dbeta += sum_rows dy
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * D;
    const float* dyr = dy + n * D;
    float* dxr = dx + n * D;
    const float m = mean[n], r = rstd[n];
    double sg = 0.0, sgx = 0.0;
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t d = 0; d < D; ++d) {
      const double g = double(dyr[d]) * (1.0 + double(gamma[d]));
      sg += g;
      sgx += g * (double(xr[d]) - m) * r;
    }
    const float mg = static_cast<float>(sg / double(D)), mgx = static_cast<float>(sgx / double(D));
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      const float xhat = (xr[d] - m) * r;
      dxr[d] += r * (dyr[d] * (1.0f + gamma[d]) - mg - xhat * mgx);
    }
  }
  if (!dgamma && !dbeta) return;  // both frozen
  const int64_t nb = col_blocks(D);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t d0 = b * kColBlock, d1 = d0 + kColBlock < D ? d0 + kColBlock : D;
    double ag[kColBlock] = {}, ab[kColBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = x + n * D;
      const float* dyr = dy + n * D;
      const float m = mean[n], r = rstd[n];
      for (int64_t d = d0; d < d1; ++d) {
        ag[d - d0] += double(dyr[d] * ((xr[d] - m) * r));
        ab[d - d0] += double(dyr[d]);
      }
    }
    for (int64_t d = d0; d < d1; ++d) {
      if (dgamma) dgamma[d] += static_cast<float>(ag[d - d0]);
      if (dbeta) dbeta[d] += static_cast<float>(ab[d - d0]);
    }
  }
}

}  // namespace ff::cpu
