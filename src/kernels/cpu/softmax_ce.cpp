#include "kernels/cpu/softmax_ce.h"

#include <cmath>

#include "core/check.h"
#include "kernels/cpu/vector_math.h"

namespace ff::cpu {
namespace {

// Validated serially, before any parallel region (an exception must not leave an OpenMP region).
void check_targets(const int32_t* targets, int64_t N, int64_t V, const char* what) {
  for (int64_t n = 0; n < N; ++n)
    FF_CHECK(targets[n] == -1 || (targets[n] >= 0 && targets[n] < V),
             "%s: target token %d at row %lld is outside [0, %lld) and is not -1 (ignored)", what,
             targets[n], static_cast<long long>(n), static_cast<long long>(V));
}

}  // namespace

void cross_entropy_forward(float* loss, float* lse, const float* logits, const int32_t* targets,
                           int64_t N, int64_t V) {
  // lse = max + log(sum_j exp(z_j - max));  loss = lse - z_target (0 for an ignored row).
  check_targets(targets, N, V, "cross_entropy_forward");
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* z = logits + n * V;
    float mx = -INFINITY;
    for (int64_t j = 0; j < V; ++j) mx = z[j] > mx ? z[j] : mx;
    const double sum = sum_exp_shifted(z, mx, V);
    const float l = mx + static_cast<float>(std::log(sum));
    lse[n] = l;
    loss[n] = targets[n] < 0 ? 0.0f : l - z[targets[n]];
  }
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, const float* dloss, int64_t N, int64_t V) {
  // forward: loss = lse(z) - z_t  =>  dz_j = dloss * (exp(z_j - lse) - [j == t]).
  // Each element is read before it is written at the same index, so dlogits may alias logits.
  check_targets(targets, N, V, "cross_entropy_backward");
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* z = logits + n * V;
    float* dz = dlogits + n * V;
    const int32_t t = targets[n];
    if (t < 0) {
      for (int64_t j = 0; j < V; ++j) dz[j] = 0.0f;
      continue;
    }
    const float g = dloss[n], l = lse[n];
    exp_shifted(dz, z, l, V);
    for (int64_t j = 0; j < V; ++j) dz[j] *= g;
    dz[t] -= g;
  }
}

}  // namespace ff::cpu
