#include "layers/vocab_parallel.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"

namespace ff {

void vocab_parallel_cross_entropy_forward(float* loss, float* lse, const float* logits, const int32_t* targets,
                                          int64_t N, int64_t Vl, int64_t v0, int64_t V, const Communicator& tp) {
  for (int64_t n = 0; n < N; ++n)
    FF_CHECK(targets[n] >= -1 && targets[n] < V, "target token %d at row %lld is outside the vocabulary [0, %lld)",
             targets[n], (long long)n, (long long)V);
  std::vector<double> mx(static_cast<size_t>(N)), sum(static_cast<size_t>(N)), tgt(static_cast<size_t>(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = logits + n * Vl;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < Vl; ++j) m = std::max(m, row[j]);
    mx[static_cast<size_t>(n)] = m;
  }
  tp.all_reduce_max(mx.data(), N);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = logits + n * Vl;
    const double m = mx[static_cast<size_t>(n)];
    double s = 0;
    for (int64_t j = 0; j < Vl; ++j) s += std::exp(static_cast<double>(row[j]) - m);
    sum[static_cast<size_t>(n)] = s;
    const int64_t t = static_cast<int64_t>(targets[n]) - v0;
    tgt[static_cast<size_t>(n)] = (targets[n] >= 0 && t >= 0 && t < Vl) ? row[t] : 0.0;
  }
  tp.all_reduce_sum(sum.data(), N);
  tp.all_reduce_sum(tgt.data(), N);
  for (int64_t n = 0; n < N; ++n) {
    const double l = mx[static_cast<size_t>(n)] + std::log(sum[static_cast<size_t>(n)]);
    lse[n] = static_cast<float>(l);
    loss[n] = targets[n] >= 0 ? static_cast<float>(l - tgt[static_cast<size_t>(n)]) : 0.0f;
  }
}

void vocab_parallel_cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, const float* dloss, int64_t N, int64_t Vl,
                                           int64_t v0) {
  // loss = lse - logit[target]:  dloss/dlogit_j = softmax_j - [j == target].
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float g = targets[n] >= 0 ? dloss[n] : 0.0f;
    const float* row = logits + n * Vl;
    float* d = dlogits + n * Vl;
    for (int64_t j = 0; j < Vl; ++j) d[j] = g * std::exp(row[j] - lse[n]);
    const int64_t t = static_cast<int64_t>(targets[n]) - v0;
    if (targets[n] >= 0 && t >= 0 && t < Vl) d[t] -= g;
  }
}

namespace {
// lse[n] of z[n, :] / tau over every shard.
void sharded_lse(float* lse, const float* z, int64_t N, int64_t Vl, float tau, const Communicator* tp) {
  std::vector<double> mx(static_cast<size_t>(N)), sum(static_cast<size_t>(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < Vl; ++j) m = std::max(m, z[n * Vl + j] / tau);
    mx[static_cast<size_t>(n)] = m;
  }
  if (tp) tp->all_reduce_max(mx.data(), N);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t j = 0; j < Vl; ++j) s += std::exp(static_cast<double>(z[n * Vl + j] / tau) - mx[static_cast<size_t>(n)]);
    sum[static_cast<size_t>(n)] = s;
  }
  if (tp) tp->all_reduce_sum(sum.data(), N);
  for (int64_t n = 0; n < N; ++n)
    lse[n] = static_cast<float>(mx[static_cast<size_t>(n)] + std::log(sum[static_cast<size_t>(n)]));
}
}  // namespace

void vocab_parallel_kl_forward(float* kl, float* lse_s, float* lse_t, const float* zs, const float* zt, int64_t N,
                               int64_t Vl, float tau, const Communicator* tp) {
  sharded_lse(lse_s, zs, N, Vl, tau, tp);
  sharded_lse(lse_t, zt, N, Vl, tau, tp);
  std::vector<double> part(static_cast<size_t>(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;  // sum_v p_t (z_t - z_s) / tau over this shard
    for (int64_t j = 0; j < Vl; ++j) {
      const double pt = std::exp(static_cast<double>(zt[n * Vl + j] / tau) - lse_t[n]);
      s += pt * (static_cast<double>(zt[n * Vl + j]) - zs[n * Vl + j]) / tau;
    }
    part[static_cast<size_t>(n)] = s;
  }
  if (tp) tp->all_reduce_sum(part.data(), N);
  for (int64_t n = 0; n < N; ++n)
    kl[n] = static_cast<float>(part[static_cast<size_t>(n)] + static_cast<double>(lse_s[n]) - lse_t[n]);
}

void vocab_parallel_kl_backward(float* dzs, const float* zs, const float* zt, const float* lse_s, const float* lse_t,
                                const float* g, int64_t N, int64_t Vl, float tau) {
  // d kl / d z_s[j] = (p_s[j] - p_t[j]) / tau  (the teacher is constant).
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < Vl; ++j) {
      const float ps = std::exp(zs[n * Vl + j] / tau - lse_s[n]), pt = std::exp(zt[n * Vl + j] / tau - lse_t[n]);
      dzs[n * Vl + j] = g[n] * (ps - pt) / tau;
    }
}

}  // namespace ff
