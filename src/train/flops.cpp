#include "train/flops.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/matmul.h"

namespace ff {

double training_flops(const ModelConfig& c, int64_t sequences, int64_t S) {
  const double h = static_cast<double>(c.d_model);
  const double f = c.activation == Activation::swiglu ? 3.0 : 2.0;
  double n_attn = 0, n_dense = 0, n_moe = 0;
  for (LayerKind k : c.layers()) {
    n_attn += k == LayerKind::attention;
    n_dense += k == LayerKind::mlp;
    n_moe += k == LayerKind::moe;
  }
  const double qd = static_cast<double>(c.num_heads * c.kv_channels());
  const double kd = static_cast<double>(c.num_kv_heads * c.kv_channels());
  const double per_token =
      6.0 * h *
          (static_cast<double>(c.ffn_hidden) * f * n_dense +
           static_cast<double>(c.moe_ffn_hidden * c.moe_top_k) * f * n_moe +
           static_cast<double>(c.moe_shared_expert_hidden) * f * n_moe) +
      n_attn * 6.0 * (h * (qd + 2.0 * kd) + qd * h) + 6.0 * h * static_cast<double>(c.vocab_size);
  const double T = static_cast<double>(sequences * S);
  const double q2 = static_cast<double>(sequences) * static_cast<double>(S) * static_cast<double>(S);
  return T * per_token + q2 * 6.0 * qd * n_attn;
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

}  // namespace ff
