// bf16 storage: the top 16 bits of an fp32 (1 sign, 8 exponent, 7 mantissa bits). Scalar
// conversions round to nearest even and flush subnormal inputs to signed zero, bit for bit what
// AVX512-BF16's vcvtne2ps2bf16 does; NaN stays NaN.
#pragma once
#include <cstdint>
#include <cstring>

namespace ff {

using bf16_t = uint16_t;

inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_t>((u >> 16) | 0x40);  // quiet NaN
  if ((u & 0x7f800000u) == 0) return static_cast<bf16_t>((u >> 16) & 0x8000u);       // subnormal: +-0
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<bf16_t>(u >> 16);
}
inline float bf16_to_float(bf16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace ff
