#include "kernels/cpu/norm.h"

#include <cmath>

#include "core/check.h"

namespace ff::cpu {
namespace {

// Parameter gradients are sums over rows. Rather than per-thread copies and a reduction, each
// thread owns a block of feature columns and walks every row in order: race-free, deterministic.
constexpr int64_t kColBlock = 64;
inline int64_t col_blocks(int64_t D) { return (D + kColBlock - 1) / kColBlock; }

inline float sigmoid(float u) { return 1.0f / (1.0f + std::exp(-u)); }

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

// ---------------------------------------------------------------------------------------------
// Gated RMSNorm over groups (norm after the gate)

namespace {

void check_gated(int64_t Ch, int64_t groups, int64_t ldz, const char* what) {
  FF_CHECK(groups > 0 && Ch > 0 && Ch % groups == 0, "%s: %lld channels do not split into %lld groups", what,
           (long long)Ch, (long long)groups);
  FF_CHECK(ldz >= Ch, "%s: z row stride %lld < channels %lld", what, (long long)ldz, (long long)Ch);
}

}  // namespace

void gated_rmsnorm_forward(float* out, float* rstd, const float* y, const float* z, const float* w, float eps, int64_t N,
                           int64_t Ch, int64_t groups, int64_t ldz) {
  // v = y silu(z);  per group of Cg = Ch / groups channels r = 1 / sqrt(mean(v^2) + eps);  out = v r w.
  ldz = ldz ? ldz : Ch;
  check_gated(Ch, groups, ldz, "gated_rmsnorm_forward");
  const int64_t Cg = Ch / groups;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * Cg;
      const float *yr = y + n * Ch + k0, *zr = z + n * ldz + k0, *wr = w + k0;
      float* o = out + n * Ch + k0;
      double ss = 0.0;
      for (int64_t k = 0; k < Cg; ++k) {
        o[k] = yr[k] * zr[k] * sigmoid(zr[k]);  // v, scaled in place below
        ss += double(o[k]) * double(o[k]);
      }
      const float r = static_cast<float>(1.0 / std::sqrt(ss / double(Cg) + double(eps)));
      rstd[n * groups + g] = r;
      for (int64_t k = 0; k < Cg; ++k) o[k] = o[k] * r * wr[k];
    }
}

void gated_rmsnorm_backward(float* dy, float* dz, float* dw, const float* dout, const float* y, const float* z,
                            const float* w, const float* rstd, int64_t N, int64_t Ch, int64_t groups, int64_t ldz,
                            int64_t lddz) {
  // forward: out_k = v_k r w_k, v_k = y_k silu(z_k), r = (mean_group v^2 + eps)^(-1/2).
  //   dv_k = r w_k dout_k - (r^3 / Cg) v_k sum_{j in group} dout_j w_j v_j
  //   dy_k = dv_k silu(z_k),  dz_k = dv_k y_k silu'(z_k),  silu'(z) = σ(z) (1 + z (1 - σ(z)))
  //   dw_k += sum_rows dout_k v_k r
  ldz = ldz ? ldz : Ch;
  lddz = lddz ? lddz : Ch;
  check_gated(Ch, groups, ldz, "gated_rmsnorm_backward");
  FF_CHECK(lddz >= Ch, "gated_rmsnorm_backward: dz row stride %lld < channels %lld", (long long)lddz, (long long)Ch);
  const int64_t Cg = Ch / groups;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * Cg;
      const float *yr = y + n * Ch + k0, *zr = z + n * ldz + k0, *wr = w + k0, *gr = dout + n * Ch + k0;
      float *dyr = dy + n * Ch + k0, *dzr = dz + n * lddz + k0;
      const float r = rstd[n * groups + g];
      double dot = 0.0;
      for (int64_t k = 0; k < Cg; ++k) dot += double(gr[k]) * double(wr[k]) * double(yr[k] * zr[k] * sigmoid(zr[k]));
      const float c = static_cast<float>(dot * double(r) * double(r) * double(r) / double(Cg));
      for (int64_t k = 0; k < Cg; ++k) {
        const float sg = sigmoid(zr[k]), silu = zr[k] * sg;
        const float dv = r * wr[k] * gr[k] - c * yr[k] * silu;
        dyr[k] = dv * silu;
        dzr[k] = dv * yr[k] * sg * (1.0f + zr[k] * (1.0f - sg));
      }
    }
  if (!dw) return;  // a frozen gain
  const int64_t nb = col_blocks(Ch);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t d0 = b * kColBlock, d1 = d0 + kColBlock < Ch ? d0 + kColBlock : Ch;
    double acc[kColBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float *yr = y + n * Ch, *zr = z + n * ldz, *gr = dout + n * Ch;
      for (int64_t d = d0; d < d1; ++d) {
        const float v = yr[d] * zr[d] * sigmoid(zr[d]);
        acc[d - d0] += double(gr[d] * v * rstd[n * groups + d / Cg]);
      }
    }
    for (int64_t d = d0; d < d1; ++d) dw[d] += static_cast<float>(acc[d - d0]);
  }
}

}  // namespace ff::cpu
