// Row helpers shared by the router kernels (router.cpp) and the load-balancing losses
// (aux_loss.cpp): option checks, finite rows, softmax, sigmoid and the top-k of one row.
// Legend: E experts, K top-k.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/router.h"

namespace ff::cpu::detail {

constexpr float kNormEps = 1e-20f;  // the renormalisations' epsilon (Megatron's 1e-20)

inline void check_options(const RouterOptions& opt, const char* who) {
  const long long E = opt.num_experts, K = opt.top_k, G = opt.num_groups, M = opt.group_topk;
  FF_CHECK(E >= 1, "%s: num_experts (E) must be >= 1, got %lld", who, E);
  FF_CHECK(K >= 1 && K <= E, "%s: top_k (K) must satisfy 1 <= K <= num_experts = %lld, got %lld",
           who, E, K);
  FF_CHECK(!(opt.score == RouterScore::sigmoid && opt.pre_softmax),
           "%s: pre_softmax applies to softmax scores only; unset it for sigmoid scores", who);
  FF_CHECK(std::isfinite(opt.topk_scaling_factor),
           "%s: topk_scaling_factor must be finite, got %g", who, double(opt.topk_scaling_factor));
  if (G == 0) {
    FF_CHECK(M == 0, "%s: group_topk = %lld needs num_groups > 0", who, M);
    return;
  }
  FF_CHECK(G >= 1 && E % G == 0, "%s: num_groups (G) = %lld must divide num_experts = %lld", who, G, E);
  FF_CHECK(M >= 1 && M <= G, "%s: group_topk (M) = %lld must satisfy 1 <= M <= num_groups = %lld", who, M, G);
  FF_CHECK(M <= K && K <= M * (E / G),
           "%s: top_k = %lld must lie in [group_topk, group_topk x E / G] = [%lld, %lld]", who, K, M, M * (E / G));
}

inline bool row_finite(const float* l, int64_t E) {
  for (int64_t e = 0; e < E; ++e)
    if (!std::isfinite(l[e])) return false;
  return true;
}

// s = softmax(l) over E (max-shifted, double sum).
inline void softmax_row(float* s, const float* l, int64_t E) {
  float m = l[0];
  for (int64_t e = 1; e < E; ++e) m = std::max(m, l[e]);
  double z = 0;
  for (int64_t e = 0; e < E; ++e) z += (s[e] = std::exp(l[e] - m));
  const float inv = static_cast<float>(1.0 / z);
  for (int64_t e = 0; e < E; ++e) s[e] *= inv;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// out[0..K) = indices of the K largest v[0..E), descending, ties to the lower index.
// v must hold no NaN (checked by the callers), so the comparator is a strict weak order.
inline void select_topk(int32_t* out, std::vector<int32_t>& order, const float* v, int64_t E, int64_t K) {
  order.resize(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) order[e] = static_cast<int32_t>(e);
  std::partial_sort(order.begin(), order.begin() + K, order.end(),
                    [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(order.begin(), order.begin() + K, out);
}

}  // namespace ff::cpu::detail
