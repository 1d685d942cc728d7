// Model FLOPs by the Megatron formula (specs/parallelism-and-moe.md §11), and the machine's
// measured peak that MFU is taken against.
#pragma once
#include <cstdint>
#include <string>

#include "models/config.h"

namespace ff {

// FLOPs of one training step (forward + backward) over `sequences` sequences of S tokens: the LM
// head's 6 T h V (T = B S) plus each layer's own count (models/layer_kind.h), which for the
// transformer kinds sums to Megatron's formula
// F = T * [6h(F_dense f N_dense + F_moe K f N_moe + F_shared f N_moe) + N_attn * 6(h(Qd+Kd+Vd) + Qd h)
//          + 6 h V] + B S^2 * 6 Qd N_attn,   f = 3 for SwiGLU else 2.
double training_flops(const ModelConfig& c, int64_t sequences, int64_t S);

// Measured GEMM rate (TFLOP/s) of the given precision on the current OpenMP thread count: the
// best of a few square products of size n (about a second of work), through the same library the
// model's GEMMs use (OpenBLAS for fp32, oneDNN for bf16): the library's ceiling.
double measure_gemm_tflops(Precision precision = Precision::fp32, int64_t n = 1536);

// What MFU is taken against: the physical peak of the precision's widest multiply-add on this
// rank's threads (kernels/cpu/peak.h), measured, or train.peak_tflops when given; and the GEMM
// library's ceiling, printed beside it (0 when the peak was given: nothing is measured then).
struct MfuBasis {
  double peak_tflops = 0;
  std::string peak_source;  // "AMX tdpbf16ps chains, 2 threads" or "train.peak_tflops"
  double gemm_ceiling_tflops = 0;
  std::string describe(Precision precision) const;  // one line for the start of a run
};
MfuBasis mfu_basis(Precision precision, double given_peak_tflops);

}  // namespace ff
