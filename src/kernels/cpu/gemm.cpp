#include "kernels/cpu/gemm.h"

#include <cblas.h>

namespace ff::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS leaves C untouched only for beta == 1; make the empty product explicit.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

void linear_forward(float* y, const float* x, const float* w, int64_t rows, int64_t in,
                    int64_t out) {
  gemm(false, true, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                     int64_t rows, int64_t in, int64_t out, bool accumulate_dx) {
  // y = x w^T  =>  dx = dy w,  dw += dy^T x
  if (dx) gemm(false, false, rows, in, out, 1.0f, dy, out, w, in, accumulate_dx ? 1.0f : 0.0f, dx, in);
  if (dw) gemm(true, false, out, in, rows, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace ff::cpu
