#include "models/prune_keep.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace ff {

HostTensor take_rows(const HostTensor& t, const std::vector<int64_t>& rows) {
  FF_CHECK(!t.shape.empty(), "take_rows of a scalar");
  int64_t row = 1;
  for (size_t d = 1; d < t.shape.size(); ++d) row *= t.shape[d];
  HostTensor out;
  out.shape = t.shape;
  out.shape[0] = static_cast<int64_t>(rows.size());
  out.data.reserve(rows.size() * static_cast<size_t>(row));
  for (int64_t r : rows) {
    FF_CHECK(r >= 0 && r < t.shape[0], "row %lld of a tensor of %lld rows", (long long)r, (long long)t.shape[0]);
    out.data.insert(out.data.end(), t.data.begin() + r * row, t.data.begin() + (r + 1) * row);
  }
  return out;
}

HostTensor take_cols(const HostTensor& t, const std::vector<int64_t>& cols) {
  FF_CHECK(!t.shape.empty(), "take_cols of a scalar");
  const int64_t n = t.shape.back(), rows = static_cast<int64_t>(t.data.size()) / std::max<int64_t>(n, 1);
  HostTensor out;
  out.shape = t.shape;
  out.shape.back() = static_cast<int64_t>(cols.size());
  out.data.reserve(static_cast<size_t>(rows) * cols.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c : cols) {
      FF_CHECK(c >= 0 && c < n, "column %lld of a tensor of %lld columns", (long long)c, (long long)n);
      out.data.push_back(t.data[static_cast<size_t>(r * n + c)]);
    }
  return out;
}

std::vector<int64_t> blocks_of(const std::vector<int64_t>& ids, int64_t size) {
  std::vector<int64_t> out;
  for (int64_t id : ids)
    for (int64_t k = 0; k < size; ++k) out.push_back(id * size + k);
  return out;
}

std::vector<int64_t> all_of(int64_t n) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  return out;
}

HostTensor source_tensor(const TensorSource& source, const std::string& name) {
  HostTensor t;
  FF_CHECK(source(name, t), "pruning: the source model has no tensor '%s'", name.c_str());
  return t;
}

bool cut(const LayerPrune& p, const std::string& suffix, const std::string& name, const TensorSource& source,
         const std::vector<int64_t>* rows, const std::vector<int64_t>* cols, HostTensor& out) {
  if (name != p.to_prefix + suffix) return false;
  out = source_tensor(source, p.from_prefix + suffix);
  if (rows) out = take_rows(out, *rows);
  if (cols) out = take_cols(out, *cols);
  return true;
}

bool cut_norm(const LayerPrune& p, const std::string& norm, const std::string& name, const TensorSource& source,
              HostTensor& out) {
  return cut(p, "." + norm + ".weight", name, source, nullptr, &p.embedding, out) ||
         cut(p, "." + norm + ".bias", name, source, nullptr, &p.embedding, out);
}

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

std::vector<int64_t> top_k_within_groups(const std::vector<double>& scores, int64_t G, int64_t k) {
  const auto n = static_cast<int64_t>(scores.size());
  FF_CHECK(G >= 1 && n % G == 0 && k % G == 0, "keeping %lld of %lld in %lld equal groups", (long long)k, (long long)n,
           (long long)G);
  const int64_t per = n / G;
  std::vector<int64_t> keep;
  for (int64_t g = 0; g < G; ++g) {
    const std::vector<double> in_group(scores.begin() + g * per, scores.begin() + (g + 1) * per);
    for (int64_t i : top_k_indices(in_group, k / G)) keep.push_back(g * per + i);
  }
  return keep;
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
  k.heads = top_k_within_groups(head_scores(scores, H, P, P_keep, k.channels), G, H_keep);
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
  return top_k_within_groups(head, Hkv, Hq_keep);
}

}  // namespace ff
