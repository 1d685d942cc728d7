// Rotary position embedding, "rotate-half" (GPT-NeoX / Megatron / HF Llama) convention, applied
// to the first rot_dim dims of each head (rot_dim = floor(rotary_percent * head_dim), even);
// the remaining head_dim - rot_dim dims pass through unchanged.
// For pair i in [0, rot_dim/2): (a, b) = (x[i], x[i + rot_dim/2]),
//   theta = pos * base^(-2i / rot_dim),  a' = a cos - b sin,  b' = b cos + a sin.
// Legend: N = B*S token rows, H heads in the buffer, dh head dim, ld row stride in floats.
#pragma once
#include <cstdint>
#include <vector>

namespace ff::cpu {

// Precomputed cos/sin, each [max_pos, rot_dim/2].
struct RopeTable {
  int64_t max_pos = 0, rot_dim = 0;
  std::vector<float> cos, sin;
};
RopeTable rope_table(int64_t max_pos, int64_t rot_dim, double base);

// In place on rows of x: row r holds H heads of dh floats starting at x + r*ld; its position is
// positions[r]. Positions must lie in [0, table.max_pos).
void rope_forward(float* x, const int32_t* positions, const RopeTable& table, int64_t N, int64_t H,
                  int64_t dh, int64_t ld);
// The rotation is orthogonal, so backward is the inverse rotation of dx, in place.
void rope_backward(float* dx, const int32_t* positions, const RopeTable& table, int64_t N,
                   int64_t H, int64_t dh, int64_t ld);

}  // namespace ff::cpu
