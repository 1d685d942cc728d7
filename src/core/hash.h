// FNV-1a, 64 bit: a fast, stable (across runs, machines and versions) hash of bytes, for names
// derived from descriptions (cache files, prepared datasets). Not for security.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ff {

constexpr uint64_t kFnv1aBasis = 1469598103934665603ull;

inline uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = kFnv1aBasis) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
inline uint64_t fnv1a(const std::string& s, uint64_t h = kFnv1aBasis) { return fnv1a(s.data(), s.size(), h); }

// The same construction over 8-byte words (a rotation mixes each word's high bits down), about
// eight times faster than fnv1a: for checksums of large files (checkpoints), where it catches any
// flipped bit and any change of length. bytes: a multiple of 8 except for the last call of a file.
inline uint64_t word_hash(const void* data, size_t bytes, uint64_t h = kFnv1aBasis) {
  const auto* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w = 0;
    for (int b = 0; b < 8; ++b) w |= static_cast<uint64_t>(p[i + b]) << (8 * b);  // little-endian, any alignment
    h = (h ^ w) * 1099511628211ull;
    h ^= h >> 29;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace ff
