#include "kernels/cpu/activation.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/vector_math.h"

namespace ff::cpu {
namespace {
constexpr int64_t kChunk = 256;  // columns per stack buffer

// sig[j] = sigmoid(gate[j]), j < n, through the vector exp.
inline void sigmoid_chunk(float* sig, const float* gate, int64_t n) {
  float neg[kChunk];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) neg[j] = -gate[j];
  exp_shifted(sig, neg, 0.0f, n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) sig[j] = 1.0f / (1.0f + sig[j]);
}

inline void store(float* f32, bf16_t* b16, int64_t at, const float* v, int64_t n) {
  if (b16)
    to_bf16_serial(b16 + at, v, n);
  else
    for (int64_t j = 0; j < n; ++j) f32[at + j] = v[j];
}
}  // namespace

// Plain SwiGLU (the dense MLP): the same passes with no prob (p = 1) and fp32 output.
void swiglu_forward(float* out, const float* in, int64_t N, int64_t F) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* gate = in + n * 2 * F;
    const float* up = gate + F;
    float sig[kChunk];
    for (int64_t j0 = 0; j0 < F; j0 += kChunk) {
      const int64_t m = std::min(kChunk, F - j0);
      sigmoid_chunk(sig, gate + j0, m);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) out[n * F + j0 + j] = gate[j0 + j] * sig[j] * up[j0 + j];
    }
  }
}

void swiglu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F) {
  // out = a s(a) b:  d/da = s(a) (1 + a (1 - s(a))) b,  d/db = a s(a)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* gate = in + n * 2 * F;
    const float* up = gate + F;
    const float* d = dout + n * F;
    float* dgate = din + n * 2 * F;
    float* dup = dgate + F;
    float sig[kChunk];
    for (int64_t j0 = 0; j0 < F; j0 += kChunk) {
      const int64_t m = std::min(kChunk, F - j0);
      sigmoid_chunk(sig, gate + j0, m);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const float a = gate[j0 + j], sj = sig[j];
        dgate[j0 + j] = d[j0 + j] * up[j0 + j] * sj * (1.0f + a * (1.0f - sj));
        dup[j0 + j] = d[j0 + j] * a * sj;
      }
    }
  }
}

namespace {
// n values of a row of the pre-activation as fp32: the row itself, or its exact bf16 -> fp32
// widening into buf.
inline const float* load_chunk(float* /*buf*/, const float* src, int64_t /*n*/) { return src; }
inline const float* load_chunk(float* buf, const bf16_t* src, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) buf[j] = bf16_to_float(src[j]);
  return buf;
}

template <class In>
void swiglu_scaled_forward_impl(float* out_f32, bf16_t* out_bf16, const In* in, const float* p, int64_t N, int64_t F) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const In* gate = in + n * 2 * F;
    const In* up = gate + F;
    const float pn = p ? p[n] : 1.0f;
    float gbuf[kChunk], ubuf[kChunk], sig[kChunk], o[kChunk];
    for (int64_t j0 = 0; j0 < F; j0 += kChunk) {
      const int64_t m = std::min(kChunk, F - j0);
      const float* g = load_chunk(gbuf, gate + j0, m);
      const float* u = load_chunk(ubuf, up + j0, m);
      sigmoid_chunk(sig, g, m);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) o[j] = g[j] * sig[j] * u[j] * pn;
      store(out_f32, out_bf16, n * F + j0, o, m);
    }
  }
}

template <class In>
void swiglu_scaled_backward_impl(float* dp, float* din_f32, bf16_t* din_bf16, const float* dout, const In* in,
                                 const float* p, int64_t N, int64_t F) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const In* gate = in + n * 2 * F;
    const In* up = gate + F;
    const float* d = dout + n * F;
    float gbuf[kChunk], ubuf[kChunk], sig[kChunk], dg[kChunk], du[kChunk];
    double dprob = 0;
    for (int64_t j0 = 0; j0 < F; j0 += kChunk) {
      const int64_t m = std::min(kChunk, F - j0);
      const float* g = load_chunk(gbuf, gate + j0, m);
      const float* u = load_chunk(ubuf, up + j0, m);
      sigmoid_chunk(sig, g, m);
      float acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < m; ++j) {
        const float a = g[j], s = sig[j], b = u[j], dj = d[j0 + j];
        acc += dj * a * s * b;
        const float ds = dj * p[n];
        dg[j] = ds * b * s * (1.0f + a * (1.0f - s));
        du[j] = ds * a * s;
      }
      dprob += acc;
      store(din_f32, din_bf16, n * 2 * F + j0, dg, m);
      store(din_f32, din_bf16, n * 2 * F + F + j0, du, m);
    }
    dp[n] = static_cast<float>(dprob);
  }
}
}  // namespace

void swiglu_scaled_forward(float* out_f32, bf16_t* out_bf16, const float* in, const float* p, int64_t N, int64_t F) {
  swiglu_scaled_forward_impl(out_f32, out_bf16, in, p, N, F);
}
void swiglu_scaled_forward(float* out_f32, bf16_t* out_bf16, const bf16_t* in, const float* p, int64_t N, int64_t F) {
  swiglu_scaled_forward_impl(out_f32, out_bf16, in, p, N, F);
}
void swiglu_scaled_backward(float* dp, float* din_f32, bf16_t* din_bf16, const float* dout, const float* in,
                            const float* p, int64_t N, int64_t F) {
  swiglu_scaled_backward_impl(dp, din_f32, din_bf16, dout, in, p, N, F);
}
void swiglu_scaled_backward(float* dp, float* din_f32, bf16_t* din_bf16, const float* dout, const bf16_t* in,
                            const float* p, int64_t N, int64_t F) {
  swiglu_scaled_backward_impl(dp, din_f32, din_bf16, dout, in, p, N, F);
}

void squared_relu_forward(float* out, const float* in, int64_t N, int64_t F) {
  const int64_t n = N * F;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float r = in[i] > 0.0f ? in[i] : 0.0f;
    out[i] = r * r;
  }
}

void squared_relu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F) {
  const int64_t n = N * F;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) din[i] = dout[i] * 2.0f * (in[i] > 0.0f ? in[i] : 0.0f);
}

void gelu_forward(float* out, const float* in, int64_t N, int64_t F) {
  const int64_t n = N * F;
  const float inv_sqrt2 = 0.70710678118654752f;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * in[i] * (1.0f + std::erf(in[i] * inv_sqrt2));
}

void gelu_backward(float* din, const float* dout, const float* in, int64_t N, int64_t F) {
  // d/du [u Phi(u)] = Phi(u) + u phi(u)
  const int64_t n = N * F;
  const float inv_sqrt2 = 0.70710678118654752f, inv_sqrt2pi = 0.39894228040143268f;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float u = in[i];
    float cdf = 0.5f * (1.0f + std::erf(u * inv_sqrt2));
    float pdf = inv_sqrt2pi * std::exp(-0.5f * u * u);
    din[i] = dout[i] * (cdf + u * pdf);
  }
}

}  // namespace ff::cpu
