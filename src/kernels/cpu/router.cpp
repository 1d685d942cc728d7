// MoE router math (specs/parallelism-and-moe.md §6). Per row n of logits l[E]:
//   plain softmax : a = topK(l);                q_j = exp(l_{a_j}) / sum_i exp(l_{a_i})
//   pre-softmax   : s = softmax(l); a = topK(s); q_j = s_{a_j}        [ / (sum_i s_{a_i} + eps) ]
//   sigmoid       : s = sigmoid(l); a = topK(s + bias); q_j = s_{a_j} [ / (sum_i s_{a_i} + eps) ]
//   p_j = topk_scaling_factor * q_j
// with eps = 1e-20 and the bracket applied when norm_topk_prob is set. With G groups and M per
// token, topK is taken over the experts of the row's M best groups (select_grouped below). Rows
// are independent, so every kernel parallelises over rows.
#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/router_detail.h"

namespace ff::cpu {
namespace {

using detail::check_options;
using detail::kNormEps;
using detail::row_finite;
using detail::select_topk;
using detail::sigmoid;
using detail::softmax_row;

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

// Per-thread buffers of the selection.
struct SelectScratch {
  std::vector<int32_t> order, top, groups, candidates;
  std::vector<double> group_score;
};

// Group-limited top-K of one row's selection values v[E] (§6.1, Megatron's group_limited_topk):
//   score(g) = sum of the top m = K / M values of v over group g's experts [g E/G, (g+1) E/G);
//   chosen   = the M groups of largest score (ties to the lower group);
//   out      = the K largest v over the chosen groups' experts, descending (ties to the lower id).
void select_grouped(int32_t* out, SelectScratch& w, const float* v, const RouterOptions& opt) {
  const int64_t E = opt.num_experts, K = opt.top_k, G = opt.num_groups, M = opt.group_topk;
  const int64_t per = E / G, m = K / M;
  w.top.resize(static_cast<size_t>(m));
  w.group_score.resize(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    select_topk(w.top.data(), w.order, v + g * per, per, m);
    double sum = 0;  // in descending order: the same sum on every call
    for (int64_t j = 0; j < m; ++j) sum += v[g * per + w.top[static_cast<size_t>(j)]];
    w.group_score[static_cast<size_t>(g)] = sum;
  }
  w.groups.resize(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) w.groups[static_cast<size_t>(g)] = static_cast<int32_t>(g);
  const std::vector<double>& gs = w.group_score;
  std::partial_sort(w.groups.begin(), w.groups.begin() + M, w.groups.end(),
                    [&gs](int32_t a, int32_t b) { return gs[a] > gs[b] || (gs[a] == gs[b] && a < b); });
  std::sort(w.groups.begin(), w.groups.begin() + M);  // candidates in ascending expert id
  w.candidates.clear();
  for (int64_t i = 0; i < M; ++i)
    for (int64_t e = 0; e < per; ++e) w.candidates.push_back(static_cast<int32_t>(w.groups[static_cast<size_t>(i)] * per + e));
  std::partial_sort(w.candidates.begin(), w.candidates.begin() + K, w.candidates.end(),
                    [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(w.candidates.begin(), w.candidates.begin() + K, out);
}

// The row's top-K experts by selection values v: group-limited when the options say so.
void select(int32_t* out, SelectScratch& w, const float* v, const RouterOptions& opt) {
  if (opt.grouped()) {
    select_grouped(out, w, v, opt);
  } else {
    select_topk(out, w.order, v, opt.num_experts, opt.top_k);
  }
}

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
    SelectScratch w;
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
        select(a, w, l, opt);
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
        select(a, w, sel, opt);
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
