#include "train/flops.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/peak.h"
#include "models/layer_kind.h"

namespace ff {

double training_flops(const ModelConfig& c, int64_t sequences, int64_t S) {
  double flops = static_cast<double>(sequences * S) * 6.0 * static_cast<double>(c.d_model) *
                 static_cast<double>(c.vocab_size);  // the LM head
  for (LayerKind k : c.layers()) flops += layer_kind(k).training_flops(c, sequences, S);
  return flops;
}

double measure_gemm_tflops(Precision precision, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n * n), 0.5f), b(a), c(a);
  std::vector<bf16_t> ah(a.size(), float_to_bf16(0.5f)), bh(ah);
  cpu::Matmul matmul;
  auto product = [&] {
    if (precision == Precision::bf16)
      matmul.run(false, false, n, n, n, ah.data(), n, bh.data(), n, c.data(), n, false);
    else
      cpu::gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  product();  // warm-up (and oneDNN's code generation)
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    product();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n) * n * n / s / 1e12);
  }
  return best;
}

MfuBasis mfu_basis(Precision precision, double given_peak_tflops) {
  MfuBasis b;
  if (given_peak_tflops > 0) {
    b.peak_tflops = given_peak_tflops;
    b.peak_source = "train.peak_tflops";
    return b;
  }
  const cpu::PeakRate peak = cpu::measure_peak(precision);
  b.peak_tflops = peak.tflops;
  b.peak_source = strprintf("%s chains, %d thread%s", cpu::peak_kernel_name(peak.kernel), peak.threads,
                            peak.threads == 1 ? "" : "s");
  b.gemm_ceiling_tflops = measure_gemm_tflops(precision);
  if (b.peak_tflops <= 0) b.peak_tflops = b.gemm_ceiling_tflops;  // no vector FMA to measure
  return b;
}

std::string MfuBasis::describe(Precision precision) const {
  std::string s = strprintf("MFU against %.3f TFLOP/s (%s)", peak_tflops, peak_source.c_str());
  if (gemm_ceiling_tflops > 0)
    s += strprintf("; the %s GEMM library's ceiling is %.3f TFLOP/s (%.0f%% of that peak)",
                   enum_to_string(precision).c_str(), gemm_ceiling_tflops, 100 * gemm_ceiling_tflops / peak_tflops);
  return s;
}

}  // namespace ff
