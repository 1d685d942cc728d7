#include "kernels/cpu/small_gemm_bf16.h"

#include <algorithm>
#include <cstring>

#include "core/bf16.h"
#include "kernels/cpu/bf16.h"
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace ff::cpu {

namespace {
constexpr int64_t NR = 32;  // columns per panel / micro-tile (two zmm of fp32 accumulators)
constexpr int64_t MR = 8;   // rows per micro-tile: 16 accumulators, 2 B loads, 1 broadcast

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline uint32_t pair(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

// The pairs [kp0, Kp) of one row of K values (an odd K pads the last with 0): dst[kp * stride].
inline void row_pairs(uint32_t* dst, int64_t stride, const float* row, int64_t K, int64_t kp0 = 0) {
  for (int64_t kp = kp0; kp < (K + 1) / 2; ++kp)
    dst[kp * stride] = pair(row[2 * kp], 2 * kp + 1 < K ? row[2 * kp + 1] : 0.0f);
}

#if defined(__AVX512BF16__)
// Eight rows of fp32 pairs -> 16 runs of 8 pairs: dst[p * stride + r] = pair p of row r, for the 16
// pairs (32 floats) starting at rows[r] + 2 * kp0. Each row becomes one vector of 16 pairs, and the
// 8 x 16 dwords are transposed in registers (unpacks, then 128-bit lane shuffles; the maskz forms
// with full masks because GCC 12 warns about the plain forms' undefined pass-through).
inline void transpose_pairs_8x16(uint32_t* dst, int64_t stride, const float* const* rows, int64_t kp0) {
  __m512i v[8], t[8], u[8];
  for (int r = 0; r < 8; ++r) {
    const float* src = rows[r] + 2 * kp0;
    v[r] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
  }
  for (int r = 0; r < 8; r += 2) {
    t[r] = _mm512_maskz_unpacklo_epi32(0xffff, v[r], v[r + 1]);      // per lane: r, r+1 of pairs 4l, 4l+1
    t[r + 1] = _mm512_maskz_unpackhi_epi32(0xffff, v[r], v[r + 1]);  // pairs 4l+2, 4l+3
  }
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: u[h + q] holds pair 4l + q of each lane l
    u[h + 0] = _mm512_maskz_unpacklo_epi64(0xff, t[h], t[h + 2]);
    u[h + 1] = _mm512_maskz_unpackhi_epi64(0xff, t[h], t[h + 2]);
    u[h + 2] = _mm512_maskz_unpacklo_epi64(0xff, t[h + 1], t[h + 3]);
    u[h + 3] = _mm512_maskz_unpackhi_epi64(0xff, t[h + 1], t[h + 3]);
  }
  auto store = [&](int64_t p, __m512i w, int half) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + p * stride), _mm512_maskz_extracti64x4_epi64(0xff, w, half));
  };
  for (int q = 0; q < 4; ++q) {  // pair 4l + q: rows 0-3 in lane l of u[q], rows 4-7 of u[q + 4]
    // x = [u_q.l0, u_q.l1, u_q+4.l0, u_q+4.l1], then lanes reordered 0 2 1 3:
    // lo = [u_q.l0, u_q+4.l0 | u_q.l1, u_q+4.l1] holds pairs q and 4 + q; hi pairs 8 + q and 12 + q.
    const __m512i x_lo = _mm512_maskz_shuffle_i32x4(0xffff, u[q], u[q + 4], 0x44);
    const __m512i x_hi = _mm512_maskz_shuffle_i32x4(0xffff, u[q], u[q + 4], 0xee);
    const __m512i lo = _mm512_maskz_shuffle_i32x4(0xffff, x_lo, x_lo, 0xd8);
    const __m512i hi = _mm512_maskz_shuffle_i32x4(0xffff, x_hi, x_hi, 0xd8);
    store(q, lo, 0);
    store(4 + q, lo, 1);
    store(8 + q, hi, 0);
    store(12 + q, hi, 1);
  }
}
#endif

#if defined(__AVX512BF16__)
// Pairs (r0[j], r1[j]) for the 16 columns j of mask m (r1 null: zeros), as 16 dwords.
inline __m512i interleave_rows(const float* r0, const float* r1, __mmask16 m) {
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512 lo = _mm512_maskz_loadu_ps(m, r0);
  const __m512 hi = r1 ? _mm512_maskz_loadu_ps(m, r1) : _mm512_setzero_ps();
  return _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}
#endif

// Bp[panel][kp][c] (32-bit pairs: element (2kp, c) low, (2kp + 1, c) high), zero padded.
void pack_b(uint32_t* Bp, bool tb, const float* B, int64_t ldb, int64_t K, int64_t N) {
  const int64_t Kp = (K + 1) / 2, panels = (N + NR - 1) / NR;
  if (N % NR)  // the last panel's padding columns
    for (int64_t kp = 0; kp < Kp; ++kp)
      std::memset(Bp + (panels - 1) * Kp * NR + kp * NR + N % NR, 0, sizeof(uint32_t) * static_cast<size_t>(NR - N % NR));
  if (tb) {  // B stored [N][K]: the two elements of a pair are adjacent in memory; transpose them
    int64_t n0 = 0;
#if defined(__AVX512BF16__)
    const int64_t full_kp = K / 32 * 16;
    for (; n0 + 8 <= N; n0 += 8) {  // 8 columns never straddle a panel (NR = 32)
      const float* rows[8];
      for (int64_t r = 0; r < 8; ++r) rows[r] = B + (n0 + r) * ldb;
      uint32_t* col = Bp + (n0 / NR) * Kp * NR + n0 % NR;
      for (int64_t kp0 = 0; kp0 < full_kp; kp0 += 16) transpose_pairs_8x16(col + kp0 * NR, NR, rows, kp0);
      for (int64_t r = 0; r < 8; ++r) row_pairs(col + r, NR, rows[r], K, full_kp);
    }
#endif
    for (int64_t n = n0; n < N; ++n) row_pairs(Bp + (n / NR) * Kp * NR + n % NR, NR, B + n * ldb, K);
    return;
  }
  // B stored [K][N]: interleave rows 2kp and 2kp + 1, 16 columns at a time.
  for (int64_t kp = 0; kp < Kp; ++kp) {
    const float* r0 = B + 2 * kp * ldb;
    const float* r1 = 2 * kp + 1 < K ? r0 + ldb : nullptr;
    int64_t n = 0;
#if defined(__AVX512BF16__)
    for (; n < N; n += 16) {
      const __mmask16 m = N - n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (N - n)) - 1);
      _mm512_mask_storeu_epi32(Bp + (n / NR) * Kp * NR + kp * NR + n % NR, m, interleave_rows(r0 + n, r1 ? r1 + n : nullptr, m));
    }
#endif
    for (; n < N; ++n) Bp[(n / NR) * Kp * NR + kp * NR + n % NR] = pair(r0[n], r1 ? r1[n] : 0.0f);
  }
}

// Ap[block][kp][r] (32-bit pairs of row block * MR + r), rows padded to a multiple of MR with zeros.
void pack_a(uint32_t* Ap, bool ta, const float* A, int64_t lda, int64_t M, int64_t K) {
  const int64_t Kp = (K + 1) / 2, Mp = round_up(M, MR);
  if (Mp > M) std::memset(Ap + (M / MR) * Kp * MR, 0, sizeof(uint32_t) * static_cast<size_t>(Kp * MR));
  if (!ta) {  // A stored [M][K]: each row's pairs are adjacent; transpose them into the blocks
    int64_t m0 = 0;
#if defined(__AVX512BF16__)
    // Eight rows x 16 pairs at a time, transposed in registers.
    const int64_t full_kp = K / 32 * 16;  // pairs covered by whole 32-float chunks
    for (; m0 + MR <= M; m0 += MR) {
      uint32_t* blk = Ap + (m0 / MR) * Kp * MR;
      const float* rows[MR];
      for (int64_t r = 0; r < MR; ++r) rows[r] = A + (m0 + r) * lda;
      for (int64_t kp0 = 0; kp0 < full_kp; kp0 += 16) transpose_pairs_8x16(blk + kp0 * MR, MR, rows, kp0);
      for (int64_t r = 0; r < MR; ++r) row_pairs(blk + r, MR, rows[r], K, full_kp);  // past the whole chunks
    }
#endif
    for (int64_t m = m0; m < M; ++m) row_pairs(Ap + (m / MR) * Kp * MR + m % MR, MR, A + m * lda, K);
    return;
  }
  // A stored [K][M]: interleave rows 2kp and 2kp + 1, 16 rows of A (two blocks) at a time.
  for (int64_t kp = 0; kp < Kp; ++kp) {
    const float* r0 = A + 2 * kp * lda;
    const float* r1 = 2 * kp + 1 < K ? r0 + lda : nullptr;
    int64_t m = 0;
#if defined(__AVX512BF16__)
    for (; m + 16 <= M; m += 16) {
      const __m512i v = interleave_rows(r0 + m, r1 ? r1 + m : nullptr, static_cast<__mmask16>(0xffff));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(Ap + (m / MR) * Kp * MR + kp * MR), _mm512_maskz_extracti64x4_epi64(0xff, v, 0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(Ap + (m / MR + 1) * Kp * MR + kp * MR),
                          _mm512_maskz_extracti64x4_epi64(0xff, v, 1));
    }
#endif
    for (; m < M; ++m) Ap[(m / MR) * Kp * MR + kp * MR + m % MR] = pair(r0[m], r1 ? r1[m] : 0.0f);
  }
}

// C[mc, nc] = alpha * (A block x panel over Kp k-pairs) + beta * C, written from the registers
// (masked stores for a partial panel; beta == 0: C is not read).
void micro_tile(float* C, int64_t ldc, int64_t mc, int64_t nc, float alpha, float beta, const uint32_t* Ap,
                const uint32_t* Bpanel, int64_t Kp) {
#if defined(__AVX512BF16__)
  // Sixteen named accumulators: GCC 12 spills an indexed array of them (and the B vectors) to the
  // stack on every step.
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
  for (int64_t kp = 0; kp < Kp; ++kp) {
    const uint32_t* a = Ap + kp * MR;
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bpanel + kp * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bpanel + kp * NR + 16);
#define FF_ROW(r)                                                              \
  {                                                                            \
    const __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));   \
    c##r##0 = _mm512_dpbf16_ps(c##r##0, ar, b0);                               \
    c##r##1 = _mm512_dpbf16_ps(c##r##1, ar, b1);                               \
  }
    FF_ROW(0) FF_ROW(1) FF_ROW(2) FF_ROW(3) FF_ROW(4) FF_ROW(5) FF_ROW(6) FF_ROW(7)
#undef FF_ROW
  }
  const __m512 out[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                             {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
  const __mmask16 k0 = nc >= 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1);
  const __mmask16 k1 = nc >= 32 ? __mmask16(0xffff) : nc > 16 ? __mmask16((1u << (nc - 16)) - 1) : __mmask16(0);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int64_t m = 0; m < mc; ++m) {
    float* c = C + m * ldc;
    if (beta == 0.0f) {
      _mm512_mask_storeu_ps(c, k0, _mm512_mul_ps(va, out[m][0]));
      _mm512_mask_storeu_ps(c + 16, k1, _mm512_mul_ps(va, out[m][1]));
    } else {
      _mm512_mask_storeu_ps(c, k0, _mm512_fmadd_ps(va, out[m][0], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k0, c))));
      _mm512_mask_storeu_ps(c + 16, k1,
                            _mm512_fmadd_ps(va, out[m][1], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k1, c + 16))));
    }
  }
#else
  float tile[MR * NR];
  for (int64_t m = 0; m < MR; ++m)
    for (int64_t c = 0; c < NR; ++c) {
      float s = 0;
      for (int64_t kp = 0; kp < Kp; ++kp) {
        const uint32_t a = Ap[kp * MR + m], b = Bpanel[kp * NR + c];
        s += bf16_to_float(static_cast<bf16_t>(a)) * bf16_to_float(static_cast<bf16_t>(b)) +
             bf16_to_float(static_cast<bf16_t>(a >> 16)) * bf16_to_float(static_cast<bf16_t>(b >> 16));
      }
      tile[m * NR + c] = s;
    }
  for (int64_t m = 0; m < mc; ++m)
    for (int64_t j = 0; j < nc; ++j)
      C[m * ldc + j] = alpha * tile[m * NR + j] + (beta == 0.0f ? 0.0f : beta * C[m * ldc + j]);
#endif
}
}  // namespace

int64_t packed_b_floats(int64_t K, int64_t N) { return round_up(N, NR) * ((K + 1) / 2); }
int64_t small_gemm_bf16_a_workspace(int64_t M, int64_t K) { return round_up(M, MR) * ((K + 1) / 2); }
int64_t small_gemm_bf16_workspace(int64_t M, int64_t N, int64_t K) {
  return packed_b_floats(K, N) + small_gemm_bf16_a_workspace(M, K);  // one float per 32-bit pair
}

void pack_b_bf16(float* packed, bool trans_b, const float* B, int64_t ldb, int64_t K, int64_t N) {
  pack_b(reinterpret_cast<uint32_t*>(packed), trans_b, B, ldb, K, N);
}

void small_gemm_bf16_packed(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                            const float* packed_b, int64_t packed_K, float beta, float* C, int64_t ldc,
                            float* workspace) {
  if (M == 0 || N == 0) return;
  const int64_t Kp = (K + 1) / 2, panel_stride = ((packed_K + 1) / 2) * NR;
  auto* Ap = reinterpret_cast<uint32_t*>(workspace);
  pack_a(Ap, trans_a, A, lda, M, K);
  const auto* Bp = reinterpret_cast<const uint32_t*>(packed_b);
  for (int64_t n0 = 0; n0 < N; n0 += NR) {
    const uint32_t* panel = Bp + (n0 / NR) * panel_stride;
    const int64_t nc = std::min(NR, N - n0);
    for (int64_t m0 = 0; m0 < M; m0 += MR)
      micro_tile(C + m0 * ldc + n0, ldc, std::min(MR, M - m0), nc, alpha, beta, Ap + (m0 / MR) * Kp * MR, panel, Kp);
  }
}

void small_gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, float* workspace) {
  if (M == 0 || N == 0) return;
  pack_b_bf16(workspace, trans_b, B, ldb, K, N);
  small_gemm_bf16_packed(trans_a, M, N, K, alpha, A, lda, workspace, K, beta, C, ldc,
                         workspace + packed_b_floats(K, N));
}

}  // namespace ff::cpu
