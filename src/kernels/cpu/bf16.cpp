#include "kernels/cpu/bf16.h"

#include <algorithm>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace ff::cpu {

namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per OpenMP chunk: below this a thread team costs more than it saves
}  // namespace

// 32 values per vcvtne2ps2bf16 where the CPU has it.
void to_bf16_serial(bf16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 32 <= n; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, reinterpret_cast<__m512i>(v));
  }
#endif
  for (; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

void to_bf16(bf16_t* dst, const float* src, int64_t n) {
  const int64_t chunks = (n + kGrain - 1) / kGrain;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kGrain;
    to_bf16_serial(dst + b, src + b, std::min(kGrain, n - b));
  }
}

void from_bf16(float* dst, const bf16_t* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kGrain)
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

void to_bf16_2d(bf16_t* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > kGrain)
  for (int64_t r = 0; r < rows; ++r) to_bf16_serial(dst + r * ld_dst, src + r * ld_src, cols);
}

}  // namespace ff::cpu
