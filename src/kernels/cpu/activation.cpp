#include "kernels/cpu/activation.h"

#include <cmath>

namespace ff::cpu {
namespace {

inline float sigmoid(float a) { return 1.0f / (1.0f + std::exp(-a)); }

}  // namespace

void swiglu_forward(float* out, const float* in, int64_t N, int64_t F) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* gate = in + n * 2 * F;
    const float* up = gate + F;
    float* o = out + n * F;
#pragma omp simd
    for (int64_t j = 0; j < F; ++j) o[j] = gate[j] * sigmoid(gate[j]) * up[j];
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
#pragma omp simd
    for (int64_t j = 0; j < F; ++j) {
      float a = gate[j], s = sigmoid(a);
      dgate[j] = d[j] * up[j] * s * (1.0f + a * (1.0f - s));
      dup[j] = d[j] * a * s;
    }
  }
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
