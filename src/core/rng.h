// Named deterministic random streams. A stream is keyed by (seed, purpose name, index), e.g.
// Rng(seed, "init", layer) or Rng(seed, "data", dp_rank): the numbers a stream yields never
// depend on which other streams exist or how many numbers they drew, so adding a layer or a
// rank does not reshuffle the rest. Generator: xoshiro256** seeded through splitmix64.
// Its whole state is four words, so a checkpoint can store it exactly.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace ff {

class Rng {
 public:
  Rng(uint64_t seed, std::string_view name, uint64_t index = 0);

  uint64_t next_u64();
  // Uniform in [0, 1) with 24 random bits (exactly representable in float).
  float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }
  // Standard normal by Box-Muller (both halves used).
  float normal();
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n);

  std::array<uint64_t, 4> state() const { return s_; }
  void set_state(const std::array<uint64_t, 4>& s) { s_ = s; has_spare_ = false; }

 private:
  std::array<uint64_t, 4> s_{};
  bool has_spare_ = false;
  float spare_ = 0.0f;
};

}  // namespace ff
