// Load-balancing losses (kernels/cpu/aux_loss.h). Rows are independent given the counts, so the
// kernels parallelise over rows; counts merge integer partial sums (order-free, exact), values
// sum per expert column in row order (bit-reproducible).
#include "kernels/cpu/aux_loss.h"

#include <vector>

#include "kernels/cpu/router_detail.h"

namespace ff::cpu {
namespace {

using detail::check_options;
using detail::kNormEps;
using detail::row_finite;
using detail::select_topk;
using detail::sigmoid;
using detail::softmax_row;

void check_groups(const BalanceGroups& g, int64_t N, const char* who) {
  FF_CHECK(N >= 0, "%s: N must be >= 0, got %lld", who, (long long)N);
  FF_CHECK(g.count >= 1 && g.rows >= 0 && g.first_row >= 0,
           "%s: balance groups need count >= 1, rows >= 0, first_row >= 0 (got %lld, %lld, %lld)", who,
           (long long)g.count, (long long)g.rows, (long long)g.first_row);
  if (N > 0)
    FF_CHECK(g.of(N - 1) < g.count, "%s: row %lld falls in group %lld of only %lld", who, (long long)(N - 1),
             (long long)g.of(N - 1), (long long)g.count);
}

}  // namespace

void aux_loss_scores(float* s, int64_t* counts, const float* logits, int64_t N, const BalanceGroups& groups,
                     const RouterOptions& opt) {
  check_options(opt, "aux_loss_scores");
  check_groups(groups, N, "aux_loss_scores");
  const int64_t E = opt.num_experts, K = opt.top_k, GE = groups.count * E;
  int64_t bad_row = N;
#pragma omp parallel reduction(min : bad_row)
  {
    std::vector<int32_t> order(static_cast<size_t>(E)), a(static_cast<size_t>(K));
    std::vector<int64_t> local(static_cast<size_t>(GE), 0);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* l = logits + n * E;
      float* sn = s + n * E;
      if (!row_finite(l, E)) {
        bad_row = std::min(bad_row, n);
        continue;
      }
      if (opt.score == RouterScore::softmax) {
        softmax_row(sn, l, E);  // s = softmax(l)
      } else {
        // s_e = sigmoid(l_e) / (sum_f sigmoid(l_f) + eps)
        double sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += (sn[e] = sigmoid(l[e]));
        const float inv = 1.0f / (static_cast<float>(sum) + kNormEps);
        for (int64_t e = 0; e < E; ++e) sn[e] *= inv;
      }
      select_topk(a.data(), order, sn, E, K);  // own top-K: no bias, no groups, no dropping
      int64_t* c = local.data() + groups.of(n) * E;
      for (int64_t j = 0; j < K; ++j) ++c[a[j]];
    }
#pragma omp critical(ff_aux_loss_counts)
    for (int64_t i = 0; i < GE; ++i) counts[i] += local[i];
  }
  FF_CHECK(bad_row == N, "aux_loss_scores: logits row %lld holds a non-finite value", (long long)bad_row);
}

double aux_loss_value(const float* s, const int64_t* counts, int64_t N, const BalanceGroups& groups, double scale,
                      const RouterOptions& opt) {
  check_options(opt, "aux_loss_value");
  check_groups(groups, N, "aux_loss_value");
  FF_CHECK(std::isfinite(scale), "aux_loss_value: scale must be finite, got %g", scale);
  const int64_t E = opt.num_experts, GE = groups.count * E;
  for (int64_t i = 0; i < GE; ++i)
    FF_CHECK(counts[i] >= 0, "aux_loss_value: counts[%lld] = %lld is negative", (long long)i, (long long)counts[i]);
  // col[g, e] = sum_{n in g} s[n, e];  L = scale * sum_{g, e} counts[g, e] col[g, e]   (double)
  std::vector<double> col(static_cast<size_t>(GE), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double* c = col.data() + groups.of(n) * E;
    for (int64_t e = 0; e < E; ++e) c[e] += s[n * E + e];
  }
  double acc = 0;
  for (int64_t i = 0; i < GE; ++i) acc += double(counts[i]) * col[static_cast<size_t>(i)];
  return scale * acc;
}

void aux_loss_backward(float* dlogits, const float* s, const int64_t* counts, const float* logits, int64_t N,
                       const BalanceGroups& groups, double scale, float grad_scale, const RouterOptions& opt) {
  check_options(opt, "aux_loss_backward");
  check_groups(groups, N, "aux_loss_backward");
  FF_CHECK(std::isfinite(scale), "aux_loss_backward: scale must be finite, got %g", scale);
  const int64_t E = opt.num_experts, GE = groups.count * E;
  // c[g, e] = grad_scale * dL/ds[n, e] = grad_scale * scale * counts[g, e], the same for every n of g.
  const double base = double(grad_scale) * scale;
  std::vector<float> c(static_cast<size_t>(GE));
  for (int64_t i = 0; i < GE; ++i) c[static_cast<size_t>(i)] = static_cast<float>(base * double(counts[i]));

#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* cn = c.data() + groups.of(n) * E;
    const float* sn = s + n * E;
    const float* l = logits + n * E;
    float* dl = dlogits + n * E;
    double cs = 0;  // sum_f c_f s_f
    for (int64_t e = 0; e < E; ++e) cs += double(cn[e]) * sn[e];
    const float dot = static_cast<float>(cs);
    if (opt.score == RouterScore::softmax) {
      // s = softmax(l)  =>  dlogits_e += s_e (c_e - sum_f c_f s_f)
      for (int64_t e = 0; e < E; ++e) dl[e] += sn[e] * (cn[e] - dot);
    } else {
      // s_e = sig_e / (Sig + eps), Sig = sum_f sig_f, sig = sigmoid(l):
      //   dL/dsig_f = (c_f - sum_e c_e s_e) / (Sig + eps);  dsig_f/dl_f = sig_f (1 - sig_f)
      double Sig = 0;
      for (int64_t e = 0; e < E; ++e) Sig += sigmoid(l[e]);
      const float inv = 1.0f / (static_cast<float>(Sig) + kNormEps);
      for (int64_t e = 0; e < E; ++e) {
        const float sg = sigmoid(l[e]);
        dl[e] += (cn[e] - dot) * inv * sg * (1.0f - sg);
      }
    }
  }
}

}  // namespace ff::cpu
