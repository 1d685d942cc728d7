// Helpers shared by the unit tests: seeded random fills, tolerance checks that print where and
// by how much they fail, and a central finite difference in double precision.
#pragma once
#include <unistd.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "layers/model_config.h"

namespace ff::test {

// The small model of the objective, LoRA, freezing, distillation and value-head tests: width 16,
// 4 query / 2 KV heads, sequences of 6, MLP 20, 4 experts of 12 (top 2) when the pattern has 'E',
// no aux loss (it is defined per micro-batch), init std 0.3 (every path carries gradient).
inline ModelConfig small_model(const std::string& pattern, int64_t vocab) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.d_model = 16;
  c.layer_pattern = pattern;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 6;
  c.ffn_hidden = 20;
  c.num_experts = pattern.find('E') != std::string::npos ? 4 : 0;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 12;
  c.moe_aux_loss_coeff = 0;
  c.init_std = 0.3;
  return c;
}

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed, "test");
  std::vector<float> v(n);
  for (auto& x : v) x = rng.normal() * scale;
  return v;
}

// |a - b| <= atol + rtol * |b| elementwise; on failure report the worst index and values.
inline ::testing::AssertionResult all_close(const float* a, const float* b, size_t n, double atol,
                                           double rtol) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    double err = std::fabs(double(a[i]) - double(b[i]));
    double budget = atol + rtol * std::fabs(double(b[i]));
    if (!(err <= budget) && (err / budget > worst || std::isnan(err))) {
      worst = std::isnan(err) ? INFINITY : err / budget;
      at = i;
    }
  }
  if (worst == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "mismatch at " << at << ": got " << a[at] << ", want "
                                       << b[at] << " (" << worst << "x the tolerance budget)";
}
inline ::testing::AssertionResult all_close(const std::vector<float>& a, const std::vector<float>& b,
                                           double atol, double rtol) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "size " << a.size() << " vs " << b.size();
  return all_close(a.data(), b.data(), a.size(), atol, rtol);
}

// Central difference of a scalar function f(x) with respect to x[i], evaluated in fp32 inputs but
// accumulated in double by f. Perturbs x in place and restores it.
inline double finite_difference(const std::function<double()>& f, float& xi, float h = 1e-2f) {
  float saved = xi;
  xi = saved + h;
  double up = f();
  xi = saved - h;
  double down = f();
  xi = saved;
  return (up - down) / (2.0 * double(h));
}

// An empty folder under the system's temporary directory, fivefold_<name>_<pid> (made anew). The
// process id keeps tests that ctest runs side by side (-j) out of each other's folders: one test
// suite's teardown once removed another's SentencePiece model mid-run.
inline std::string fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const std::string d = (fs::temp_directory_path() / ("fivefold_" + name + "_" + std::to_string(getpid()))).string();
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Dot product in double, the usual projection for gradient checks: L = <w, y>.
inline double dot(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

}  // namespace ff::test
