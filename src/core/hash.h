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

}  // namespace ff
