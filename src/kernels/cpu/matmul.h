// bf16 GEMM through oneDNN's matmul (AVX512-BF16 / AMX kernels where the CPU has them): bf16
// operands, fp32 accumulation and fp32 result. Row-major; transposes are expressed as strides in
// the memory descriptors, never as copies.
// Primitives are created once per shape and kept: oneDNN JIT-compiles each one (0.1-6 ms), far too
// slow to repeat per call. Shapes whose row count changes every step (the experts' segments) use
// a primitive with that dimension left to run time, so one primitive serves every segment.
// Not thread-safe: one Matmul per thread of control (a model owns one).
// Legend: C[M, N] = op(A)[M, K] op(B)[K, N], lda/ldb/ldc row strides of the stored matrices.
#pragma once
#include <cstdint>
#include <memory>

#include "kernels/cpu/bf16.h"

namespace ff::cpu {

// Which dimension varies from call to call (left to run time in the cached primitive).
enum class Varying : uint8_t { none, m, k };

class Matmul {
 public:
  Matmul();
  ~Matmul();
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  // C = op(A) op(B), or C += op(A) op(B) when accumulate. K == 0 gives C = 0 (or leaves it).
  void run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
           const bf16_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, Varying varying = Varying::none);

  // The same with a bf16 result (rounded from the fp32 accumulation), overwritten.
  void run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
           const bf16_t* B, int64_t ldb, bf16_t* C, int64_t ldc, Varying varying = Varying::none);

  size_t cached_primitives() const;

 private:
  void execute(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16_t* A, int64_t lda,
               const bf16_t* B, int64_t ldb, void* C, bool c_bf16, int64_t ldc, bool accumulate, Varying varying);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::cpu
