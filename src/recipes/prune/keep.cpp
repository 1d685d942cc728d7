#include "recipes/prune/keep.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace ff {

std::vector<int64_t> top_k_indices(const std::vector<double>& scores, int64_t k) {
  const auto n = static_cast<int64_t>(scores.size());
  FF_CHECK(k >= 0 && k <= n, "keeping %lld of %lld", (long long)k, (long long)n);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
  });
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

namespace {

// r[p] = ||score[:, p]||_2 over the heads, then q[h] = ||score[h, kept]||_2.
std::vector<double> head_scores(const std::vector<double>& scores, int64_t H, int64_t P, int64_t P_keep,
                                std::vector<int64_t>& channels) {
  FF_CHECK(static_cast<int64_t>(scores.size()) == H * P, "Mamba scores: %zu values for %lld heads x %lld channels",
           scores.size(), (long long)H, (long long)P);
  std::vector<double> r(static_cast<size_t>(P), 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t p = 0; p < P; ++p) r[static_cast<size_t>(p)] += scores[static_cast<size_t>(h * P + p)] * scores[static_cast<size_t>(h * P + p)];
  for (double& v : r) v = std::sqrt(v);
  channels = top_k_indices(r, P_keep);
  std::vector<double> q(static_cast<size_t>(H), 0.0);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t p : channels) q[static_cast<size_t>(h)] += scores[static_cast<size_t>(h * P + p)] * scores[static_cast<size_t>(h * P + p)];
    q[static_cast<size_t>(h)] = std::sqrt(q[static_cast<size_t>(h)]);
  }
  return q;
}

void check_heads(int64_t H, int64_t G, int64_t H_keep) {
  FF_CHECK(H_keep >= G && H_keep <= H && H_keep % G == 0,
           "keeping %lld Mamba2 heads of %lld in %lld groups: the kept heads must be a multiple of the groups (each "
           "group keeps as many heads) and at most %lld", (long long)H_keep, (long long)H, (long long)G, (long long)H);
}

}  // namespace

MambaKeep mamba_keep_group_aware(const std::vector<double>& scores, int64_t H, int64_t P, int64_t G, int64_t H_keep,
                                 int64_t P_keep) {
  check_heads(H, G, H_keep);
  MambaKeep k;
  const std::vector<double> q = head_scores(scores, H, P, P_keep, k.channels);
  const int64_t per = H / G;
  for (int64_t g = 0; g < G; ++g) {
    const std::vector<double> in_group(q.begin() + g * per, q.begin() + (g + 1) * per);
    for (int64_t h : top_k_indices(in_group, H_keep / G)) k.heads.push_back(g * per + h);
  }
  return k;
}

MambaKeep mamba_keep_group_unaware(const std::vector<double>& scores, int64_t H, int64_t P, int64_t G, int64_t H_keep,
                                   int64_t P_keep) {
  check_heads(H, G, H_keep);
  MambaKeep k;
  k.heads = top_k_indices(head_scores(scores, H, P, P_keep, k.channels), H_keep);
  return k;
}

std::vector<int64_t> attention_heads_keep(const std::vector<double>& scores, int64_t Hq, int64_t Hkv, int64_t dh,
                                          int64_t Hq_keep) {
  FF_CHECK(Hq_keep >= Hkv && Hq_keep <= Hq && Hq_keep % Hkv == 0,
           "keeping %lld query heads of %lld in %lld query groups: a multiple of the groups, at most all",
           (long long)Hq_keep, (long long)Hq, (long long)Hkv);
  std::vector<double> head(static_cast<size_t>(Hq), 0.0);
  for (int64_t h = 0; h < Hq; ++h) {
    for (int64_t c = 0; c < dh; ++c) head[static_cast<size_t>(h)] += scores[static_cast<size_t>(h * dh + c)] * scores[static_cast<size_t>(h * dh + c)];
    head[static_cast<size_t>(h)] = std::sqrt(head[static_cast<size_t>(h)]);
  }
  const int64_t per = Hq / Hkv;
  std::vector<int64_t> keep;
  for (int64_t g = 0; g < Hkv; ++g) {
    const std::vector<double> in_group(head.begin() + g * per, head.begin() + (g + 1) * per);
    for (int64_t h : top_k_indices(in_group, Hq_keep / Hkv)) keep.push_back(g * per + h);
  }
  return keep;
}

}  // namespace ff
