// Array conversions between fp32 and bf16 (core/bf16.h): 32 values per vcvtne2ps2bf16 where the
// CPU has AVX512-BF16, the scalar rounding (same bits) elsewhere.
#pragma once
#include <cstdint>

#include "core/bf16.h"

namespace ff::cpu {
// dst[i] = bf16(src[i]), i < n (OpenMP over large n).
void to_bf16(bf16_t* dst, const float* src, int64_t n);
// The same for one short run, without OpenMP (for use inside a caller's parallel loop).
void to_bf16_serial(bf16_t* dst, const float* src, int64_t n);
}  // namespace ff::cpu
