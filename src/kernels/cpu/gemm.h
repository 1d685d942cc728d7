// GEMM through the BLAS (OpenBLAS, OpenMP build). Row-major throughout.
// Legend: M rows of the output, N columns, K the contracted size.
#pragma once
#include <cstdint>

namespace ff::cpu {

// C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T; lda/ldb/ldc are row strides.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc);

// A linear layer without bias, weights stored [out, in] (PyTorch / Hugging Face layout).
// y[rows, out] = x[rows, in] * w[out, in]^T          (y overwritten)
void linear_forward(float* y, const float* x, const float* w, int64_t rows, int64_t in,
                    int64_t out);
// dx[rows, in] (= or += per accumulate_dx) dy * w;  dw[out, in] += dy^T * x  (always accumulates).
// dx may be null when the input gradient is not needed.
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                     int64_t rows, int64_t in, int64_t out, bool accumulate_dx);

}  // namespace ff::cpu
