#include "layers/context_parallel.h"

#include <cstring>

#include "kernels/cpu/attention.h"

namespace ff {

namespace {

// Row (b, i) of rank q's local rows <-> row (b, position) of the whole sequences.
// gathered: [CP, B, L, width] (rank-major, as the all-gather returns it); whole: [B, S, width].
void gathered_to_whole(float* whole, const float* gathered, int64_t B, int64_t L, int P, int64_t width) {
  const int64_t S = L * P;
  for (int q = 0; q < P; ++q)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < L; ++i)
        std::memcpy(whole + (b * S + cp_position(i, L, q, P)) * width, gathered + ((q * B + b) * L + i) * width,
                    sizeof(float) * static_cast<size_t>(width));
}

void whole_to_gathered(float* gathered, const float* whole, int64_t B, int64_t L, int P, int64_t width) {
  const int64_t S = L * P;
  for (int q = 0; q < P; ++q)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < L; ++i)
        std::memcpy(gathered + ((q * B + b) * L + i) * width, whole + (b * S + cp_position(i, L, q, P)) * width,
                    sizeof(float) * static_cast<size_t>(width));
}

// Row i of chunk k of sequence b (k = 0: the first c local rows, 1: the last c) in the local
// layout [B L, ld] is row b c + i of a chunk buffer [B c, width]; these copy the columns
// [col, col + width) between the two.
void chunk_gather(float* chunk, const float* local, int64_t B, int64_t L, int64_t ld, int64_t col, int64_t width,
                  int k) {
  const int64_t c = L / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < c; ++i)
      std::memcpy(chunk + (b * c + i) * width, local + (b * L + k * c + i) * ld + col,
                  sizeof(float) * static_cast<size_t>(width));
}

void chunk_scatter(float* local, const float* chunk, int64_t B, int64_t L, int64_t ld, int64_t col, int64_t width,
                   int k) {
  const int64_t c = L / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < c; ++i)
      std::memcpy(local + (b * L + k * c + i) * ld + col, chunk + (b * c + i) * width,
                  sizeof(float) * static_cast<size_t>(width));
}

cpu::AttentionShape chunk_shape(const CpAttentionShape& sh, int k, int rank, int P) {
  const int64_t c = sh.L / 2, S = sh.L * P;
  const int64_t offset = k == 0 ? rank * c : (2 * P - 1 - rank) * c;
  return {sh.B, c, sh.Hq, sh.Hkv, sh.dh, sh.Hq * sh.dh, 2 * sh.Hkv * sh.dh, sh.scale, S, offset};
}

}  // namespace

void cp_attention_forward(CpAttentionSaved& s, float* o, const float* qkv, const CpAttentionShape& sh,
                          const Communicator& cp, Arena& arena) {
  const int P = cp.size();
  const int64_t B = sh.B, L = sh.L, c = L / 2, qw = sh.Hq * sh.dh, kvw = 2 * sh.Hkv * sh.dh, W = qw + kvw;
  // K|V of my rows, all-gathered, in position order.
  float* kv_local = arena.alloc_f32(B * L * kvw);
  for (int64_t r = 0; r < B * L; ++r)
    std::memcpy(kv_local + r * kvw, qkv + r * W + qw, sizeof(float) * static_cast<size_t>(kvw));
  float* gathered = arena.alloc_f32(P * B * L * kvw);
  cp.all_gather(gathered, kv_local, B * L * kvw);
  s.kv = arena.alloc(Shape{B, L * P, kvw});
  gathered_to_whole(s.kv.f32(), gathered, B, L, P, kvw);
  for (int k = 0; k < 2; ++k) {
    s.q[k] = arena.alloc(Shape{B * c, qw});
    s.o[k] = arena.alloc(Shape{B * c, qw});
    s.lse[k] = arena.alloc(Shape{B, sh.Hq, c});
    chunk_gather(s.q[k].f32(), qkv, B, L, W, 0, qw, k);
    cpu::attention_forward(s.o[k].f32(), s.lse[k].f32(), s.q[k].f32(), s.kv.f32(), s.kv.f32() + sh.Hkv * sh.dh,
                           chunk_shape(sh, k, cp.rank(), P));
    chunk_scatter(o, s.o[k].f32(), B, L, qw, 0, qw, k);
  }
}

void cp_attention_backward(float* dqkv, const float* dO, const CpAttentionSaved& s, const CpAttentionShape& sh,
                           const Communicator& cp, Arena& scratch) {
  const int P = cp.size();
  const int64_t B = sh.B, L = sh.L, c = L / 2, S = L * P, qw = sh.Hq * sh.dh, kvw = 2 * sh.Hkv * sh.dh, W = qw + kvw;
  float* dkv = scratch.alloc_f32(B * S * kvw);  // sum over the two chunks of dK|dV (whole sequences)
  std::memset(dkv, 0, sizeof(float) * static_cast<size_t>(B * S * kvw));
  float* dkv_chunk = scratch.alloc_f32(B * S * kvw);
  float* dq = scratch.alloc_f32(B * c * qw);
  float* dOc = scratch.alloc_f32(B * c * qw);
  for (int k = 0; k < 2; ++k) {
    chunk_gather(dOc, dO, B, L, qw, 0, qw, k);
    cpu::attention_backward(dq, dkv_chunk, dkv_chunk + sh.Hkv * sh.dh, dOc, s.q[k].f32(), s.kv.f32(),
                            s.kv.f32() + sh.Hkv * sh.dh, s.o[k].f32(), s.lse[k].f32(), chunk_shape(sh, k, cp.rank(), P));
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < B * S * kvw; ++i) dkv[i] += dkv_chunk[i];
    chunk_scatter(dqkv, dq, B, L, W, 0, qw, k);
  }
  // Back to the owners of the rows: the adjoint of the all-gather is a reduce-scatter.
  float* gathered = scratch.alloc_f32(P * B * L * kvw);
  whole_to_gathered(gathered, dkv, B, L, P, kvw);
  float* mine = scratch.alloc_f32(B * L * kvw);
  cp.reduce_scatter(mine, gathered, B * L * kvw);
  for (int64_t r = 0; r < B * L; ++r)
    std::memcpy(dqkv + r * W + qw, mine + r * kvw, sizeof(float) * static_cast<size_t>(kvw));
}

}  // namespace ff
