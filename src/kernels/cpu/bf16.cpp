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

}  // namespace ff::cpu
