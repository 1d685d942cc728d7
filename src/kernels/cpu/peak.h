// The core's physical arithmetic peak, measured (issue 18): what MFU is taken against, instead of
// the rate of whichever GEMM library a precision happens to call. Independent chains of the
// widest multiply-add instruction the CPU has run on every OpenMP thread at once, with enough
// accumulators in flight that the instruction's latency is hidden and only its issue rate counts:
//   fp32  vfmadd231ps on zmm (AVX-512F): 16 lanes x 2 = 32 FLOPs per instruction;
//         on ymm (AVX2 + FMA): 16 FLOPs;
//   bf16  TDPBF16PS (AMX-BF16, where the CPU has it and Linux grants the tile state): a
//         16 x 16 fp32 tile += a 16 x 32 by 32 x 16 bf16 product, 16 * 16 * 32 * 2 = 16,384 FLOPs;
//         else vdpbf16ps on zmm (AVX512-BF16): 16 lanes x 2 pairs x 2 = 64 FLOPs;
//         else the fp32 peak (bf16 operands are widened and multiplied in fp32).
// Each kernel returns what its accumulators hold, so a test can check the arithmetic it did (the
// chains are never timed by a test).
#pragma once
#include <cstdint>
#include <string>

#include "models/config.h"

namespace ff::cpu {

enum class PeakKernel : uint8_t { fma_ymm, fma_zmm, dpbf16_zmm, amx_bf16, none };

// The kernel each precision's peak uses on this CPU (and, for AMX, this OS).
PeakKernel peak_kernel(Precision precision);
const char* peak_kernel_name(PeakKernel k);  // the instruction, e.g. "vdpbf16ps zmm"
// FLOPs one instruction of the kernel does.
double flops_per_instruction(PeakKernel k);

// Runs `iterations` rounds of the kernel's chains on one thread with every multiplicand 1 and
// returns the value each accumulator lane then holds: an fp32 FMA chain acc = acc * 1 + 1 gives
// `iterations`, vdpbf16ps (two products of 1 x 1 per lane) 2 x iterations, TDPBF16PS (32 per
// element) 32 x iterations. Also returns through `instructions` how many it issued.
double run_peak_kernel(PeakKernel k, int64_t iterations, int64_t* instructions = nullptr);

struct PeakRate {
  double tflops = 0;     // over the threads in use
  PeakKernel kernel = PeakKernel::none;
  int threads = 1;
  std::string describe() const;  // "1.02 TFLOP/s (vdpbf16ps zmm chains, 2 threads)"
};
// The best of a few timed runs (about 0.1 s of work in all) on omp_get_max_threads() threads.
PeakRate measure_peak(Precision precision);

}  // namespace ff::cpu
