// A single-threaded GEMM on bf16-rounded operands with fp32 accumulation, for the small block
// products inside already-parallel kernels (the attention blocks), where a library call per block
// would cost more than the product. fp32 inputs are rounded to bf16 while they are packed, so
// callers keep fp32 data; AVX512-BF16 (vdpbf16ps) does the products, a scalar loop elsewhere.
//   C[M, N] = alpha op(A)[M, K] op(B)[K, N] + beta C   (beta == 0: C is not read)
// Packed layouts hold pairs of consecutive-k elements as one 32-bit word, as vdpbf16ps reads them:
//   op(B): panels of 32 columns, [panel][k / 2][32];  op(A): blocks of 8 rows, [block][k / 2][8].
// A B operand used by many products (the keys and values of an attention head) is packed once
// (pack_b_bf16) and passed to small_gemm_bf16_packed, which may use its first K rows and N columns.
#pragma once
#include <cstdint>

namespace ff::cpu {

// Floats of a packed op(B) [K, N].
int64_t packed_b_floats(int64_t K, int64_t N);
void pack_b_bf16(float* packed, bool trans_b, const float* B, int64_t ldb, int64_t K, int64_t N);

// Floats of the scratch small_gemm_bf16_packed needs (the packed A) and small_gemm_bf16 needs
// (packed A and B).
int64_t small_gemm_bf16_a_workspace(int64_t M, int64_t K);
int64_t small_gemm_bf16_workspace(int64_t M, int64_t N, int64_t K);

// B packed by pack_b_bf16 with packed_K >= K rows and at least N columns.
void small_gemm_bf16_packed(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                            const float* packed_b, int64_t packed_K, float beta, float* C, int64_t ldc,
                            float* workspace);
void small_gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, float* workspace);

}  // namespace ff::cpu
