// The physical-peak kernels (kernels/cpu/peak.h) do the arithmetic they are credited with: every
// multiplicand is 1, so after n rounds an fp32 FMA chain (acc * 1 + 1) holds n, a vdpbf16ps chain
// (two products 1 x 1 per lane and round) 2n, an AMX TDPBF16PS tile (32 per element) 32n, all
// exact in fp32 below 2^24. Nothing here is timed.
#include <gtest/gtest.h>

#include "kernels/cpu/peak.h"

namespace ff::cpu {
namespace {

constexpr int64_t kRounds = 1000;

void expect_kernel(PeakKernel k, double per_round) {
  int64_t instructions = 0;
  EXPECT_EQ(run_peak_kernel(k, kRounds, &instructions), per_round * kRounds) << peak_kernel_name(k);
  EXPECT_EQ(instructions % kRounds, 0) << peak_kernel_name(k);
  EXPECT_GT(instructions, 0);
}

TEST(PeakKernels, Fp32ChainsComputeTheirMultiplyAdds) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) GTEST_SKIP() << "no AVX2 + FMA";
  expect_kernel(PeakKernel::fma_ymm, 1);
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512F: the zmm chain is not run";
  expect_kernel(PeakKernel::fma_zmm, 1);
  EXPECT_EQ(peak_kernel(Precision::fp32), PeakKernel::fma_zmm);
}

TEST(PeakKernels, Bf16KernelComputesItsDotProducts) {
  const PeakKernel k = peak_kernel(Precision::bf16);
  if (k == PeakKernel::amx_bf16) {
    expect_kernel(k, 32);
    if (__builtin_cpu_supports("avx512bf16")) expect_kernel(PeakKernel::dpbf16_zmm, 2);
    return;
  }
  if (k != PeakKernel::dpbf16_zmm) GTEST_SKIP() << "no AVX512-BF16 or AMX: bf16's peak is the fp32 one";
  expect_kernel(k, 2);
}

TEST(PeakKernels, FlopsPerInstructionFollowTheOperandShapes) {
  EXPECT_EQ(flops_per_instruction(PeakKernel::fma_ymm), 8 * 2);
  EXPECT_EQ(flops_per_instruction(PeakKernel::fma_zmm), 16 * 2);
  EXPECT_EQ(flops_per_instruction(PeakKernel::dpbf16_zmm), 16 * 2 * 2);
  EXPECT_EQ(flops_per_instruction(PeakKernel::amx_bf16), 16 * 16 * 32 * 2);
}

TEST(PeakKernels, MeasuredPeakNamesItsKernel) {
  const PeakRate r = measure_peak(Precision::fp32);
  if (r.kernel == PeakKernel::none) GTEST_SKIP() << "no vector FMA";
  EXPECT_GT(r.tflops, 0);
  EXPECT_NE(r.describe().find(peak_kernel_name(r.kernel)), std::string::npos);
}

}  // namespace
}  // namespace ff::cpu
