#include "kernels/cpu/rope.h"

#include <cmath>

#include "core/check.h"

namespace ff::cpu {
namespace {

// Validated serially, before any parallel region (an exception must not leave an OpenMP region).
void check_rope_args(const int32_t* positions, const RopeTable& t, int64_t N, int64_t H,
                     int64_t dh, int64_t ld, const char* what) {
  FF_CHECK(t.rot_dim <= dh, "%s: rotary dim %lld exceeds head dim %lld", what,
           static_cast<long long>(t.rot_dim), static_cast<long long>(dh));
  FF_CHECK(ld >= H * dh, "%s: row stride %lld is smaller than H*dh = %lld", what,
           static_cast<long long>(ld), static_cast<long long>(H * dh));
  for (int64_t r = 0; r < N; ++r)
    FF_CHECK(positions[r] >= 0 && positions[r] < t.max_pos,
             "%s: position %d at row %lld is outside the rope table [0, %lld)", what, positions[r],
             static_cast<long long>(r), static_cast<long long>(t.max_pos));
}

// Rotate every head of every row by +theta (sign = +1) or -theta (sign = -1).
void rope_apply(float* x, const int32_t* positions, const RopeTable& t, int64_t N, int64_t H,
                int64_t dh, int64_t ld, float sign) {
  const int64_t half = t.rot_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    const float* c = t.cos.data() + static_cast<int64_t>(positions[r]) * half;
    const float* s = t.sin.data() + static_cast<int64_t>(positions[r]) * half;
    for (int64_t h = 0; h < H; ++h) {
      float* a = x + r * ld + h * dh;
      float* b = a + half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float ai = a[i], bi = b[i], si = sign * s[i];
        a[i] = ai * c[i] - bi * si;
        b[i] = bi * c[i] + ai * si;
      }
    }
  }
}

}  // namespace

RopeTable rope_table(int64_t max_pos, int64_t rot_dim, double base) {
  // theta(pos, i) = pos * base^(-2i / rot_dim), computed in double then stored as fp32 cos/sin.
  FF_CHECK(rot_dim >= 0 && rot_dim % 2 == 0, "rope_table: rotary dim must be even and >= 0, got %lld",
           static_cast<long long>(rot_dim));
  FF_CHECK(max_pos >= 0, "rope_table: max_pos must be >= 0, got %lld", static_cast<long long>(max_pos));
  FF_CHECK(base > 0.0, "rope_table: base must be positive, got %g", base);
  RopeTable t;
  t.max_pos = max_pos;
  t.rot_dim = rot_dim;
  const int64_t half = rot_dim / 2;
  t.cos.resize(static_cast<size_t>(max_pos * half));
  t.sin.resize(static_cast<size_t>(max_pos * half));
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(base, -2.0 * double(i) / double(rot_dim));
    for (int64_t p = 0; p < max_pos; ++p) {
      const double theta = double(p) * inv_freq;
      t.cos[p * half + i] = static_cast<float>(std::cos(theta));
      t.sin[p * half + i] = static_cast<float>(std::sin(theta));
    }
  }
  return t;
}

void rope_forward(float* x, const int32_t* positions, const RopeTable& table, int64_t N, int64_t H,
                  int64_t dh, int64_t ld) {
  // a' = a cos - b sin,  b' = b cos + a sin  on the pairs (x[i], x[i + rot_dim/2]).
  check_rope_args(positions, table, N, H, dh, ld, "rope_forward");
  rope_apply(x, positions, table, N, H, dh, ld, 1.0f);
}

void rope_backward(float* dx, const int32_t* positions, const RopeTable& table, int64_t N,
                   int64_t H, int64_t dh, int64_t ld) {
  // forward: [a'; b'] = R(theta) [a; b] with R orthogonal  =>  [da; db] = R(theta)^T [da'; db']
  // = R(-theta) [da'; db']:  da = da' cos + db' sin,  db = db' cos - da' sin.
  check_rope_args(positions, table, N, H, dh, ld, "rope_backward");
  rope_apply(dx, positions, table, N, H, dh, ld, -1.0f);
}

}  // namespace ff::cpu
