#include "layers/context_parallel.h"

#include <algorithm>
#include <cmath>
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
  return {sh.B, c, sh.Hq, sh.Hkv, sh.dh, sh.Hq * sh.dh, 2 * sh.Hkv * sh.dh, sh.scale, S, offset, 0, sh.bf16};
}

void allgather_forward(CpAttentionSaved& s, float* o, const float* qkv, const CpAttentionShape& sh,
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

void allgather_backward(float* dqkv, const float* dO, const CpAttentionSaved& s, const CpAttentionShape& sh,
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

// Position of local chunk k (0 or 1) of CP rank `rank`.
int64_t chunk_offset(int k, int rank, int P, int64_t c) { return k == 0 ? rank * c : (2 * P - 1 - rank) * c; }

// o_acc, lse_acc [B c, Hq dh] / [B, Hq, c] absorb a partial result (o_b, lse_b) by log-sum-exp.
void merge_partial(float* o_acc, float* lse_acc, const float* o_b, const float* lse_b, int64_t B, int64_t c,
                   int64_t Hq, int64_t dh) {
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < B * Hq; ++bh) {
    const int64_t b = bh / Hq, h = bh % Hq;
    for (int64_t i = 0; i < c; ++i) {
      const float lb = lse_b[bh * c + i];
      if (lb == -INFINITY) continue;
      float& la = lse_acc[bh * c + i];
      const float m = std::max(la, lb), l = m + std::log(std::exp(la - m) + std::exp(lb - m));
      const float wa = la == -INFINITY ? 0.0f : std::exp(la - l), wb = std::exp(lb - l);
      float* oa = o_acc + (b * c + i) * Hq * dh + h * dh;
      const float* ob = o_b + (b * c + i) * Hq * dh + h * dh;
      for (int64_t d = 0; d < dh; ++d) oa[d] = oa[d] * wa + ob[d] * wb;
      la = l;
    }
  }
}

// Sends `n` floats of `send` to the next CP rank and receives as many from the previous one.
void ring_pass(float* recv, const float* send, int64_t n, const Communicator& cp, int tag) {
  const int P = cp.size(), r = cp.rank();
  cp.send(send, n, (r + 1) % P, tag);
  cp.recv(recv, n, (r + P - 1) % P, tag);
  cp.wait_sends();
}

void ring_forward(CpAttentionSaved& s, float* o, const float* qkv, const CpAttentionShape& sh, const Communicator& cp,
                  Arena& arena) {
  const int P = cp.size(), r = cp.rank();
  const int64_t B = sh.B, L = sh.L, c = L / 2, qw = sh.Hq * sh.dh, kvw = 2 * sh.Hkv * sh.dh, W = qw + kvw;
  s.kv = arena.alloc(Shape{B * L, kvw});
  for (int64_t row = 0; row < B * L; ++row)
    std::memcpy(s.kv.f32() + row * kvw, qkv + row * W + qw, sizeof(float) * static_cast<size_t>(kvw));
  float* block = arena.alloc_f32(B * L * kvw);  // the visiting block
  float* next = arena.alloc_f32(B * L * kvw);
  std::memcpy(block, s.kv.f32(), sizeof(float) * static_cast<size_t>(B * L * kvw));
  float* kchunk = arena.alloc_f32(B * c * kvw);
  float* o_part = arena.alloc_f32(B * c * qw);
  float* lse_part = arena.alloc_f32(B * sh.Hq * c);
  for (int k = 0; k < 2; ++k) {
    s.q[k] = arena.alloc(Shape{B * c, qw});
    s.o[k] = arena.alloc(Shape{B * c, qw});
    s.lse[k] = arena.alloc(Shape{B, sh.Hq, c});
    chunk_gather(s.q[k].f32(), qkv, B, L, W, 0, qw, k);
    std::memset(s.o[k].f32(), 0, sizeof(float) * static_cast<size_t>(B * c * qw));
    std::fill(s.lse[k].f32(), s.lse[k].f32() + B * sh.Hq * c, -INFINITY);
  }
  for (int step = 0; step < P; ++step) {
    const int src = (r - step + P) % P;
    for (int kk = 0; kk < 2; ++kk) {
      chunk_gather(kchunk, block, B, L, kvw, 0, kvw, kk);
      for (int qk = 0; qk < 2; ++qk) {
        const int64_t qo = chunk_offset(qk, r, P, c), ko = chunk_offset(kk, src, P, c);
        if (ko > qo + c - 1) continue;  // every key of the chunk is in every query's future
        cpu::AttentionShape a{B, c, sh.Hq, sh.Hkv, sh.dh, qw, kvw, sh.scale, c, qo, ko, sh.bf16};
        cpu::attention_forward(o_part, lse_part, s.q[qk].f32(), kchunk, kchunk + sh.Hkv * sh.dh, a);
        merge_partial(s.o[qk].f32(), s.lse[qk].f32(), o_part, lse_part, B, c, sh.Hq, sh.dh);
      }
    }
    if (step + 1 < P) {
      ring_pass(next, block, B * L * kvw, cp, 100 + step);
      std::swap(block, next);
    }
  }
  for (int k = 0; k < 2; ++k) chunk_scatter(o, s.o[k].f32(), B, L, qw, 0, qw, k);
}

void ring_backward(float* dqkv, const float* dO, const CpAttentionSaved& s, const CpAttentionShape& sh,
                   const Communicator& cp, Arena& scratch) {
  const int P = cp.size(), r = cp.rank();
  const int64_t B = sh.B, L = sh.L, c = L / 2, qw = sh.Hq * sh.dh, kvw = 2 * sh.Hkv * sh.dh, W = qw + kvw;
  const int64_t n = B * L * kvw;
  // The visiting block travels with its accumulated dK|dV: [K|V block | dK|dV block].
  float* block = scratch.alloc_f32(2 * n);
  float* next = scratch.alloc_f32(2 * n);
  std::memcpy(block, s.kv.f32(), sizeof(float) * static_cast<size_t>(n));
  std::memset(block + n, 0, sizeof(float) * static_cast<size_t>(n));
  float* kchunk = scratch.alloc_f32(B * c * kvw);
  float* dkchunk = scratch.alloc_f32(B * c * kvw);
  float* dq_part = scratch.alloc_f32(B * c * qw);
  float* dq[2];
  float* dOc[2];
  for (int k = 0; k < 2; ++k) {
    dq[k] = scratch.alloc_f32(B * c * qw);
    std::memset(dq[k], 0, sizeof(float) * static_cast<size_t>(B * c * qw));
    dOc[k] = scratch.alloc_f32(B * c * qw);
    chunk_gather(dOc[k], dO, B, L, qw, 0, qw, k);
  }
  for (int step = 0; step < P; ++step) {
    const int src = (r - step + P) % P;
    for (int kk = 0; kk < 2; ++kk) {
      chunk_gather(kchunk, block, B, L, kvw, 0, kvw, kk);
      for (int qk = 0; qk < 2; ++qk) {
        const int64_t qo = chunk_offset(qk, r, P, c), ko = chunk_offset(kk, src, P, c);
        if (ko > qo + c - 1) continue;
        // With the final o and lse, this block's share of the gradients (flash-attention style).
        cpu::AttentionShape a{B, c, sh.Hq, sh.Hkv, sh.dh, qw, kvw, sh.scale, c, qo, ko, sh.bf16};
        cpu::attention_backward(dq_part, dkchunk, dkchunk + sh.Hkv * sh.dh, dOc[qk], s.q[qk].f32(), kchunk,
                                kchunk + sh.Hkv * sh.dh, s.o[qk].f32(), s.lse[qk].f32(), a);
        for (int64_t i = 0; i < B * c * qw; ++i) dq[qk][i] += dq_part[i];
        // Add the chunk's dK|dV into the travelling gradient rows of chunk kk.
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < c; ++i) {
            float* g = block + n + (b * L + kk * c + i) * kvw;
            const float* d = dkchunk + (b * c + i) * kvw;
            for (int64_t j = 0; j < kvw; ++j) g[j] += d[j];
          }
      }
    }
    // Pass on (block and gradient); after the last step's pass every gradient is home again.
    ring_pass(next, block, 2 * n, cp, 200 + step);
    std::swap(block, next);
  }
  for (int k = 0; k < 2; ++k) chunk_scatter(dqkv, dq[k], B, L, W, 0, qw, k);
  for (int64_t row = 0; row < B * L; ++row)
    std::memcpy(dqkv + row * W + qw, block + n + row * kvw, sizeof(float) * static_cast<size_t>(kvw));
}

}  // namespace

void cp_attention_forward(CpAttentionSaved& s, float* o, const float* qkv, const CpAttentionShape& sh,
                          const Communicator& cp, Arena& arena) {
  if (sh.ring) ring_forward(s, o, qkv, sh, cp, arena);
  else allgather_forward(s, o, qkv, sh, cp, arena);
}

void cp_attention_backward(float* dqkv, const float* dO, const CpAttentionSaved& s, const CpAttentionShape& sh,
                           const Communicator& cp, Arena& scratch) {
  if (sh.ring) ring_backward(dqkv, dO, s, sh, cp, scratch);
  else allgather_backward(dqkv, dO, s, sh, cp, scratch);
}

}  // namespace ff
