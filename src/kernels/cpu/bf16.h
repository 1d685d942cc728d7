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
// dst[i] = float(src[i]).
void from_bf16(float* dst, const bf16_t* src, int64_t n);
// A [rows, cols] block with row strides: dst[r * ld_dst + c] = bf16(src[r * ld_src + c]).
void to_bf16_2d(bf16_t* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols);
}  // namespace ff::cpu
