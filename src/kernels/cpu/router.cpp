// MoE router math (specs/parallelism-and-moe.md §6). Per row n of logits l[E]:
//   plain softmax : a = topK(l);                q_j = exp(l_{a_j}) / sum_i exp(l_{a_i})
//   pre-softmax   : s = softmax(l); a = topK(s); q_j = s_{a_j}        [ / (sum_i s_{a_i} + eps) ]
//   sigmoid       : s = sigmoid(l); a = topK(s + bias); q_j = s_{a_j} [ / (sum_i s_{a_i} + eps) ]
//   p_j = topk_scaling_factor * q_j
// with eps = 1e-20 and the bracket applied when norm_topk_prob is set. Rows are independent, so
// every kernel parallelises over rows; counts merge integer partial sums (order-free, exact).
#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"

namespace ff::cpu {
namespace {

constexpr float kNormEps = 1e-20f;

void check_options(const RouterOptions& opt, const char* who) {
  const long long E = opt.num_experts, K = opt.top_k;
  FF_CHECK(E >= 1, "%s: num_experts (E) must be >= 1, got %lld", who, E);
  FF_CHECK(K >= 1 && K <= E, "%s: top_k (K) must satisfy 1 <= K <= num_experts = %lld, got %lld",
           who, E, K);
  FF_CHECK(!(opt.score == RouterScore::sigmoid && opt.pre_softmax),
           "%s: pre_softmax applies to softmax scores only; unset it for sigmoid scores", who);
  FF_CHECK(std::isfinite(opt.topk_scaling_factor),
           "%s: topk_scaling_factor must be finite, got %g", who, double(opt.topk_scaling_factor));
}

// Range and distinctness of every row of topk_idx[N, K] (serial: cheap, and it may throw).
void check_topk_idx(const int32_t* topk_idx, int64_t N, int64_t K, int64_t E, const char* who) {
  std::vector<int64_t> seen(static_cast<size_t>(E), -1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t e = topk_idx[n * K + j];
      FF_CHECK(e >= 0 && e < E, "%s: topk_idx[%lld, %lld] = %lld is out of range [0, %lld)", who,
               (long long)n, (long long)j, (long long)e, (long long)E);
      FF_CHECK(seen[e] != n, "%s: expert %lld appears twice in topk_idx row %lld", who,
               (long long)e, (long long)n);
      seen[e] = n;
    }
}

// order[0..K) = indices of the K largest v[0..E), descending, ties to the lower index.
// v must hold no NaN (checked by the callers), so the comparator is a strict weak order.
void select_topk(int32_t* out, std::vector<int32_t>& order, const float* v, int64_t E, int64_t K) {
  for (int64_t e = 0; e < E; ++e) order[e] = static_cast<int32_t>(e);
  std::partial_sort(order.begin(), order.begin() + K, order.end(),
                    [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(order.begin(), order.begin() + K, out);
}

bool row_finite(const float* l, int64_t E) {
  for (int64_t e = 0; e < E; ++e)
    if (!std::isfinite(l[e])) return false;
  return true;
}

// s = softmax(l) over E (max-shifted, double sum).
void softmax_row(float* s, const float* l, int64_t E) {
  float m = l[0];
  for (int64_t e = 1; e < E; ++e) m = std::max(m, l[e]);
  double z = 0;
  for (int64_t e = 0; e < E; ++e) z += (s[e] = std::exp(l[e] - m));
  const float inv = static_cast<float>(1.0 / z);
  for (int64_t e = 0; e < E; ++e) s[e] *= inv;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

double logsumexp_row(const float* l, int64_t E) {
  float m = l[0];
  for (int64_t e = 1; e < E; ++e) m = std::max(m, l[e]);
  double z = 0;
  for (int64_t e = 0; e < E; ++e) z += std::exp(double(l[e]) - double(m));
  return double(m) + std::log(z);
}

}  // namespace

void router_topk_forward(int32_t* topk_idx, float* topk_probs, float* scores, const float* logits,
                         const float* expert_bias, int64_t N, const RouterOptions& opt) {
  check_options(opt, "router_topk_forward");
  FF_CHECK(N >= 0, "router_topk_forward: N must be >= 0, got %lld", (long long)N);
  const int64_t E = opt.num_experts, K = opt.top_k;
  const bool plain = opt.score == RouterScore::softmax && !opt.pre_softmax;
  FF_CHECK(plain || scores != nullptr,
           "router_topk_forward: scores[N, E] is required (saved for backward) with pre-softmax "
           "or sigmoid scores");
  FF_CHECK(expert_bias == nullptr || opt.score == RouterScore::sigmoid,
           "router_topk_forward: expert_bias (aux-loss-free balancing) requires sigmoid scores");
  if (expert_bias)
    FF_CHECK(row_finite(expert_bias, E), "router_topk_forward: expert_bias is not finite");

  int64_t bad_row = N;  // first row with a non-finite logit
#pragma omp parallel reduction(min : bad_row)
  {
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::vector<float> biased(static_cast<size_t>(expert_bias ? E : 0));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* l = logits + n * E;
      int32_t* a = topk_idx + n * K;
      float* p = topk_probs + n * K;
      if (!row_finite(l, E)) {
        bad_row = std::min(bad_row, n);
        continue;
      }
      if (plain) {
        // a = topK(l); q_j = exp(l_{a_j} - l_{a_0}) / sum_i exp(l_{a_i} - l_{a_0}) (l_{a_0} = max)
        select_topk(a, order, l, E, K);
        double z = 0;
        for (int64_t j = 0; j < K; ++j) z += (p[j] = std::exp(l[a[j]] - l[a[0]]));
        const float inv = static_cast<float>(1.0 / z);
        for (int64_t j = 0; j < K; ++j) p[j] *= inv;
      } else {
        float* s = scores + n * E;
        if (opt.score == RouterScore::softmax) {
          softmax_row(s, l, E);
        } else {
          for (int64_t e = 0; e < E; ++e) s[e] = sigmoid(l[e]);
        }
        const float* sel = s;
        if (expert_bias) {  // the bias moves the selection only, never the probs
          for (int64_t e = 0; e < E; ++e) biased[e] = s[e] + expert_bias[e];
          sel = biased.data();
        }
        select_topk(a, order, sel, E, K);
        double sum = 0;
        for (int64_t j = 0; j < K; ++j) sum += (p[j] = s[a[j]]);
        if (opt.norm_topk_prob) {
          const float inv = 1.0f / (static_cast<float>(sum) + kNormEps);
          for (int64_t j = 0; j < K; ++j) p[j] *= inv;
        }
      }
      for (int64_t j = 0; j < K; ++j) p[j] *= opt.topk_scaling_factor;
    }
  }
  FF_CHECK(bad_row == N, "router_topk_forward: logits row %lld holds a non-finite value",
           (long long)bad_row);
}

void router_topk_backward(float* dlogits, const float* dtopk_probs, const int32_t* topk_idx,
                          const float* topk_probs, const float* scores, const float* logits,
                          int64_t N, const RouterOptions& opt) {
  check_options(opt, "router_topk_backward");
  FF_CHECK(N >= 0, "router_topk_backward: N must be >= 0, got %lld", (long long)N);
  const int64_t E = opt.num_experts, K = opt.top_k;
  const bool plain = opt.score == RouterScore::softmax && !opt.pre_softmax;
  FF_CHECK(plain || scores != nullptr,
           "router_topk_backward: scores[N, E] saved by the forward is required with pre-softmax "
           "or sigmoid scores");
  check_topk_idx(topk_idx, N, K, E, "router_topk_backward");
  const float factor = opt.topk_scaling_factor;

#pragma omp parallel
  {
    std::vector<float> q(static_cast<size_t>(K)), g(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const int32_t* a = topk_idx + n * K;
      float* dl = dlogits + n * E;
      std::fill(dl, dl + E, 0.0f);
      // p_j = factor * q_j  =>  dL/dq_j = factor * dp_j =: g_j
      for (int64_t j = 0; j < K; ++j) g[j] = factor * dtopk_probs[n * K + j];
      if (plain) {
        // q_j = softmax_j(l_{a_0..a_{K-1}})  =>  dL/dl_{a_j} = q_j (g_j - sum_i g_i q_i);
        // unselected logits do not enter q. (K = 1: q = 1, gradient 0.)
        const float* l = logits + n * E;
        double z = 0, gq = 0;
        for (int64_t j = 0; j < K; ++j) z += (q[j] = std::exp(l[a[j]] - l[a[0]]));
        for (int64_t j = 0; j < K; ++j) {
          q[j] = static_cast<float>(q[j] / z);
          gq += double(g[j]) * q[j];
        }
        for (int64_t j = 0; j < K; ++j) dl[a[j]] = q[j] * (g[j] - static_cast<float>(gq));
        continue;
      }
      const float* s = scores + n * E;
      if (opt.norm_topk_prob) {
        // q_j = s_{a_j} / (S + eps), S = sum_i s_{a_i}
        //   => dL/ds_{a_i} = sum_j g_j dq_j/ds_{a_i} = (g_i - sum_j g_j q_j) / (S + eps)
        double S = 0, gq = 0;
        for (int64_t j = 0; j < K; ++j) S += s[a[j]];
        const float inv = 1.0f / (static_cast<float>(S) + kNormEps);
        for (int64_t j = 0; j < K; ++j) gq += double(g[j]) * (s[a[j]] * inv);
        for (int64_t j = 0; j < K; ++j) g[j] = (g[j] - static_cast<float>(gq)) * inv;
      }
      // now g_j = dL/ds_{a_j} (and dL/ds_e = 0 off the selection)
      if (opt.score == RouterScore::softmax) {
        // s = softmax(l) over all E  =>  dL/dl_e = s_e (dL/ds_e - sum_f dL/ds_f s_f):
        // every expert gets -s_e * <g, s_a>, the selected ones also s_{a_j} g_j.
        double gs = 0;
        for (int64_t j = 0; j < K; ++j) gs += double(g[j]) * s[a[j]];
        const float c = static_cast<float>(gs);
        for (int64_t e = 0; e < E; ++e) dl[e] = -s[e] * c;
        for (int64_t j = 0; j < K; ++j) dl[a[j]] += s[a[j]] * g[j];
      } else {
        // s_e = sigmoid(l_e)  =>  dL/dl_e = dL/ds_e * s_e (1 - s_e); zero off the selection.
        for (int64_t j = 0; j < K; ++j) dl[a[j]] = g[j] * s[a[j]] * (1.0f - s[a[j]]);
      }
    }
  }
}

void aux_loss_scores(float* s, int64_t* counts, const float* logits, int64_t N,
                     const RouterOptions& opt) {
  check_options(opt, "aux_loss_scores");
  FF_CHECK(N >= 0, "aux_loss_scores: N must be >= 0, got %lld", (long long)N);
  const int64_t E = opt.num_experts, K = opt.top_k;
  int64_t bad_row = N;
#pragma omp parallel reduction(min : bad_row)
  {
    std::vector<int32_t> order(static_cast<size_t>(E)), a(static_cast<size_t>(K));
    std::vector<int64_t> local(static_cast<size_t>(E), 0);
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
      select_topk(a.data(), order, sn, E, K);  // own top-K: no bias, no dropping
      for (int64_t j = 0; j < K; ++j) ++local[a[j]];
    }
#pragma omp critical(ff_aux_loss_counts)
    for (int64_t e = 0; e < E; ++e) counts[e] += local[e];
  }
  FF_CHECK(bad_row == N, "aux_loss_scores: logits row %lld holds a non-finite value",
           (long long)bad_row);
}

double aux_loss_value(const float* s, const int64_t* counts, int64_t N, int64_t total_tokens,
                      float coeff, const RouterOptions& opt) {
  check_options(opt, "aux_loss_value");
  FF_CHECK(N >= 0, "aux_loss_value: N must be >= 0, got %lld", (long long)N);
  FF_CHECK(total_tokens > 0, "aux_loss_value: total_tokens (T) must be > 0, got %lld",
           (long long)total_tokens);
  const int64_t E = opt.num_experts, K = opt.top_k;
  // L = coeff * E / (K T^2) * sum_e counts[e] * sum_n s[n, e]   (double throughout)
  std::vector<double> col(static_cast<size_t>(E), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) col[e] += s[n * E + e];
  double acc = 0;
  for (int64_t e = 0; e < E; ++e) {
    FF_CHECK(counts[e] >= 0, "aux_loss_value: counts[%lld] = %lld is negative", (long long)e,
             (long long)counts[e]);
    acc += double(counts[e]) * col[e];
  }
  const double T = double(total_tokens);
  return double(coeff) * double(E) / (double(K) * T * T) * acc;
}

void aux_loss_backward(float* dlogits, const float* s, const int64_t* counts, const float* logits,
                       int64_t N, int64_t total_tokens, float coeff, float grad_scale,
                       const RouterOptions& opt) {
  check_options(opt, "aux_loss_backward");
  FF_CHECK(N >= 0, "aux_loss_backward: N must be >= 0, got %lld", (long long)N);
  FF_CHECK(total_tokens > 0, "aux_loss_backward: total_tokens (T) must be > 0, got %lld",
           (long long)total_tokens);
  const int64_t E = opt.num_experts, K = opt.top_k;
  // c_e = grad_scale * dL/ds[n, e] = grad_scale * coeff * E * counts[e] / (K T^2), same for all n.
  const double T = double(total_tokens);
  const double base = double(grad_scale) * double(coeff) * double(E) / (double(K) * T * T);
  std::vector<float> c(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) c[e] = static_cast<float>(base * double(counts[e]));

#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* sn = s + n * E;
    const float* l = logits + n * E;
    float* dl = dlogits + n * E;
    double cs = 0;  // sum_f c_f s_f
    for (int64_t e = 0; e < E; ++e) cs += double(c[e]) * sn[e];
    const float dot = static_cast<float>(cs);
    if (opt.score == RouterScore::softmax) {
      // s = softmax(l)  =>  dlogits_e += s_e (c_e - sum_f c_f s_f)
      for (int64_t e = 0; e < E; ++e) dl[e] += sn[e] * (c[e] - dot);
    } else {
      // s_e = sig_e / (Sig + eps), Sig = sum_f sig_f, sig = sigmoid(l):
      //   dL/dsig_f = (c_f - sum_e c_e s_e) / (Sig + eps);  dsig_f/dl_f = sig_f (1 - sig_f)
      double Sig = 0;
      for (int64_t e = 0; e < E; ++e) Sig += sigmoid(l[e]);
      const float inv = 1.0f / (static_cast<float>(Sig) + kNormEps);
      for (int64_t e = 0; e < E; ++e) {
        const float sg = sigmoid(l[e]);
        dl[e] += (c[e] - dot) * inv * sg * (1.0f - sg);
      }
    }
  }
}

double z_loss_forward(float* lse, const float* logits, int64_t N, int64_t E, float coeff) {
  FF_CHECK(N >= 0 && E >= 1, "z_loss_forward: need N >= 0 and E >= 1, got N = %lld, E = %lld",
           (long long)N, (long long)E);
  if (N == 0) return 0.0;
  // L = coeff * (1/N) * sum_n lse(l_n)^2, lse(l) = m + log sum_e exp(l_e - m)
  // Rows in parallel, then a serial sum in row order so the value is bit-reproducible.
  std::vector<double> v(static_cast<size_t>(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    v[n] = logsumexp_row(logits + n * E, E);
    lse[n] = static_cast<float>(v[n]);
  }
  double acc = 0;
  for (int64_t n = 0; n < N; ++n) acc += v[n] * v[n];
  return double(coeff) * acc / double(N);
}

void z_loss_backward(float* dlogits, const float* logits, const float* lse, int64_t N, int64_t E,
                     float coeff, float grad_scale) {
  FF_CHECK(N >= 0 && E >= 1, "z_loss_backward: need N >= 0 and E >= 1, got N = %lld, E = %lld",
           (long long)N, (long long)E);
  if (N == 0) return;
  // L = coeff/N sum_n lse_n^2, dlse_n/dl_{n,e} = softmax(l_n)_e
  //   => dlogits[n, e] += grad_scale * coeff * (2/N) * lse_n * exp(l_{n,e} - lse_n)
  const float base = static_cast<float>(double(grad_scale) * double(coeff) * 2.0 / double(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * E;
    float* dl = dlogits + n * E;
    const float w = base * lse[n];
    for (int64_t e = 0; e < E; ++e) dl[e] += w * std::exp(l[e] - lse[n]);
  }
}

}  // namespace ff::cpu
