#include "kernels/cpu/vector_math.h"

#include <cmath>

#ifdef __AVX512F__
#include <immintrin.h>
extern "C" __m512 _ZGVeN16v_expf(__m512);  // glibc libmvec, AVX-512 variant of expf
#endif

namespace ff::cpu {

void exp_shifted(float* y, const float* x, float shift, int64_t n) {
  int64_t i = 0;
#ifdef __AVX512F__
  const __m512 s = _mm512_set1_ps(shift);
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _ZGVeN16v_expf(_mm512_sub_ps(_mm512_loadu_ps(x + i), s)));
  if (i < n) {  // the tail, masked: lanes past n are neither read nor written
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _ZGVeN16v_expf(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s)));
    return;
  }
#endif
  for (; i < n; ++i) y[i] = std::exp(x[i] - shift);
}

double sum_exp_shifted(const float* x, float shift, int64_t n) { return exp_shifted_sum(nullptr, x, shift, n); }

double exp_shifted_sum(float* y, const float* x, float shift, int64_t n) {  // y null: the sum only
  int64_t i = 0;
  double sum = 0.0;
#ifdef __AVX512F__
  // fp32 lanes for up to 64 vectors at a time (each lane sums at most 64 values in [0, 1] when
  // shift is the max), then into double: the double conversions off the inner loop.
  const __m512 s = _mm512_set1_ps(shift);
  __m512d acc = _mm512_setzero_pd();
  while (i + 16 <= n) {
    __m512 part = _mm512_setzero_ps();
    for (int v = 0; v < 64 && i + 16 <= n; ++v, i += 16) {
      const __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
      if (y) _mm512_storeu_ps(y + i, e);
      part = _mm512_add_ps(part, e);
    }
    acc = _mm512_add_pd(acc, _mm512_maskz_cvtps_pd(0xFF, _mm512_extractf32x8_ps(part, 0)));
    acc = _mm512_add_pd(acc, _mm512_maskz_cvtps_pd(0xFF, _mm512_extractf32x8_ps(part, 1)));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, acc);
  for (double l : lanes) sum += l;
#endif
  for (; i < n; ++i) {
    const float e = std::exp(x[i] - shift);
    if (y) y[i] = e;
    sum += e;
  }
  return sum;
}

float max_value(const float* x, int64_t n) {
  int64_t i = 0;
  float mx = -INFINITY;
#ifdef __AVX512F__
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (; i + 16 <= n; i += 16) m = _mm512_maskz_max_ps(0xffff, m, _mm512_loadu_ps(x + i));  // (maskz: GCC 12 warns on the plain form)
  alignas(64) float lanes[16];  // (GCC 12 warns inside _mm512_reduce_max_ps)
  _mm512_store_ps(lanes, m);
  for (float l : lanes) mx = l > mx ? l : mx;
#endif
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  return mx;
}

}  // namespace ff::cpu
