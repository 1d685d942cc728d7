// Token permutation for MoE dispatch (specs/parallelism-and-moe.md §7.2, §7.6).
// The plan is a stable counting sort of the routing slots s = n*K + j by expert: a token holds an
// expert at most once, so slot order inside an expert is token order. The scatter-adds
// (permute_backward, unpermute_forward) run per token over that token's rows in ascending row
// order, so they are parallel over tokens yet sum in row order: bit-identical to a serial loop.
#include "kernels/cpu/permute.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"

namespace ff::cpu {
namespace {

void check_sizes(int64_t N, int64_t K, int64_t E, const char* who) {
  FF_CHECK(N >= 0, "%s: N must be >= 0, got %lld", who, (long long)N);
  FF_CHECK(E >= 1 && K >= 1 && K <= E, "%s: need 1 <= K <= E, got K = %lld, E = %lld", who,
           (long long)K, (long long)E);
}

// Range and distinctness of every row of topk_idx[N, K].
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

// Slots grouped by expert, slot-ascending (= token-ascending) inside each expert:
// the slots of expert e are slots[start[e] .. start[e+1]).
void group_slots_by_expert(std::vector<int64_t>& start, std::vector<int64_t>& slots,
                           const int32_t* topk_idx, int64_t N, int64_t K, int64_t E) {
  start.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t s = 0; s < N * K; ++s) ++start[topk_idx[s] + 1];
  for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  slots.resize(static_cast<size_t>(N * K));
  for (int64_t s = 0; s < N * K; ++s) slots[fill[topk_idx[s]]++] = s;
}

void check_plan(const DispatchPlan& plan, const char* who) {
  const size_t R = plan.row_token.size();
  FF_CHECK(plan.row_slot.size() == R && plan.row_prob.size() == R,
           "%s: inconsistent DispatchPlan (row_token %zu, row_slot %zu, row_prob %zu rows)", who,
           R, plan.row_slot.size(), plan.row_prob.size());
}

// CSR list of each token's rows in ascending row order: rows[off[n] .. off[n+1]).
void rows_by_token(std::vector<int64_t>& off, std::vector<int64_t>& rows, const DispatchPlan& plan,
                   int64_t N, const char* who) {
  const int64_t R = plan.num_rows();
  off.assign(static_cast<size_t>(N + 1), 0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = plan.row_token[r];
    FF_CHECK(t >= 0 && t < N, "%s: row_token[%lld] = %lld is out of range [0, %lld)", who,
             (long long)r, (long long)t, (long long)N);
    ++off[t + 1];
  }
  for (int64_t n = 0; n < N; ++n) off[n + 1] += off[n];
  std::vector<int64_t> fill(off.begin(), off.end() - 1);
  rows.resize(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) rows[fill[plan.row_token[r]]++] = r;
}

// out[r, :] = src[row_token[r], :]  (shared by permute_forward and unpermute_backward)
void gather_rows(float* out, const float* src, const DispatchPlan& plan, int64_t D,
                 const char* who) {
  check_plan(plan, who);
  FF_CHECK(D >= 0, "%s: D must be >= 0, got %lld", who, (long long)D);
  const int64_t R = plan.num_rows();
  for (int64_t r = 0; r < R; ++r)
    FF_CHECK(plan.row_token[r] >= 0, "%s: row_token[%lld] = %d is negative", who, (long long)r,
             plan.row_token[r]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(out + r * D, src + int64_t(plan.row_token[r]) * D, sizeof(float) * size_t(D));
}

}  // namespace

int64_t expert_capacity(int64_t N, int64_t K, int64_t E, double capacity_factor) {
  check_sizes(N, K, E, "expert_capacity");
  FF_CHECK(std::isfinite(capacity_factor) && capacity_factor > 0,
           "expert_capacity: capacity_factor must be > 0, got %g", capacity_factor);
  // C = min(ceil(N*K/E * factor), N); evaluated as Megatron's get_capacity does in Python
  // (double (N*K)/E, times factor, ceil), so both agree at the rounding edges.
  const double c = std::ceil(double(N * K) / double(E) * capacity_factor);
  return c >= double(N) ? N : static_cast<int64_t>(c);
}

void capacity_keep_mask(uint8_t* keep, const int32_t* topk_idx, const float* topk_probs, int64_t N,
                        int64_t K, int64_t E, int64_t C, DropPolicy policy) {
  check_sizes(N, K, E, "capacity_keep_mask");
  FF_CHECK(C >= 0, "capacity_keep_mask: capacity C must be >= 0, got %lld", (long long)C);
  check_topk_idx(topk_idx, N, K, E, "capacity_keep_mask");
  if (policy == DropPolicy::probs)
    for (int64_t s = 0; s < N * K; ++s)
      FF_CHECK(!std::isnan(topk_probs[s]), "capacity_keep_mask: topk_probs[%lld] is NaN",
               (long long)s);
  std::vector<int64_t> start, slots;
  group_slots_by_expert(start, slots, topk_idx, N, K, E);
  std::fill(keep, keep + N * K, uint8_t{0});
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E; ++e) {
    auto first = slots.begin() + start[e], last = slots.begin() + start[e + 1];
    if (last - first > C) {
      if (policy == DropPolicy::probs) {
        // The C largest probs; ties go to the lower slot, i.e. the lower token index.
        std::partial_sort(first, first + C, last, [topk_probs](int64_t a, int64_t b) {
          return topk_probs[a] > topk_probs[b] || (topk_probs[a] == topk_probs[b] && a < b);
        });
      }
      last = first + C;  // position: the first C in token order (slots are token-ascending)
    }
    for (auto it = first; it != last; ++it) keep[*it] = 1;
  }
}

void build_dispatch_plan(DispatchPlan& plan, const int32_t* topk_idx, const float* topk_probs,
                         const uint8_t* keep, int64_t N, int64_t K, int64_t E,
                         int64_t pad_to_capacity) {
  check_sizes(N, K, E, "build_dispatch_plan");
  FF_CHECK(pad_to_capacity >= -1 && pad_to_capacity <= N,
           "build_dispatch_plan: pad_to_capacity must be -1 (no padding) or in [0, N = %lld], "
           "got %lld",
           (long long)N, (long long)pad_to_capacity);
  check_topk_idx(topk_idx, N, K, E, "build_dispatch_plan");
  std::vector<int64_t> start, slots;
  group_slots_by_expert(start, slots, topk_idx, N, K, E);

  plan.tokens_per_expert.assign(static_cast<size_t>(E), 0);
  plan.row_token.clear();
  plan.row_slot.clear();
  plan.row_prob.clear();
  const int64_t C = pad_to_capacity;
  const size_t reserve = C >= 0 ? size_t(E * C) : slots.size();
  plan.row_token.reserve(reserve);
  plan.row_slot.reserve(reserve);
  plan.row_prob.reserve(reserve);
  auto push = [&plan](int64_t token, int64_t slot, float prob) {
    plan.row_token.push_back(static_cast<int32_t>(token));
    plan.row_slot.push_back(static_cast<int32_t>(slot));
    plan.row_prob.push_back(prob);
  };

  for (int64_t e = 0; e < E; ++e) {
    const size_t first_row = plan.row_token.size();
    for (int64_t i = start[e]; i < start[e + 1]; ++i) {  // kept routed slots, token-ascending
      const int64_t s = slots[i];
      if (keep == nullptr || keep[s]) push(s / K, s, topk_probs[s]);
    }
    const int64_t kept = static_cast<int64_t>(plan.row_token.size() - first_row);
    if (C >= 0) {
      FF_CHECK(kept <= C,
               "build_dispatch_plan: expert %lld keeps %lld routed slots, more than "
               "pad_to_capacity = %lld; drop with capacity_keep_mask at the same capacity first",
               (long long)e, (long long)kept, (long long)C);
      // Fill-ins: the lowest-index tokens without a kept row here (the kept tokens ascend, so
      // walk both lists together), prob 0 and slot -1. C <= N leaves enough candidates.
      size_t k = first_row;
      for (int64_t t = 0, need = C - kept; need > 0; ++t) {
        if (k < first_row + size_t(kept) && plan.row_token[k] == t) {
          ++k;
          continue;
        }
        push(t, -1, 0.0f);
        --need;
      }
    }
    plan.tokens_per_expert[e] = static_cast<int64_t>(plan.row_token.size() - first_row);
  }
}

void permute_forward(float* rows, const float* x, const DispatchPlan& plan, int64_t D) {
  gather_rows(rows, x, plan, D, "permute_forward");
}

void permute_backward(float* dx, const float* drows, const DispatchPlan& plan, int64_t N,
                      int64_t D) {
  // forward rows[r] = x[row_token[r]]  =>  dx[n] += sum_{r: row_token[r] = n} drows[r]
  check_plan(plan, "permute_backward");
  FF_CHECK(N >= 0 && D >= 0, "permute_backward: need N, D >= 0, got N = %lld, D = %lld",
           (long long)N, (long long)D);
  std::vector<int64_t> off, rows;
  rows_by_token(off, rows, plan, N, "permute_backward");
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* o = dx + n * D;
    for (int64_t i = off[n]; i < off[n + 1]; ++i) {
      const float* g = drows + rows[i] * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += g[d];
    }
  }
}

void unpermute_forward(float* y, const float* rows, const DispatchPlan& plan, int64_t N,
                       int64_t D) {
  check_plan(plan, "unpermute_forward");
  FF_CHECK(N >= 0 && D >= 0, "unpermute_forward: need N, D >= 0, got N = %lld, D = %lld",
           (long long)N, (long long)D);
  std::vector<int64_t> off, list;
  rows_by_token(off, list, plan, N, "unpermute_forward");
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* o = y + n * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t i = off[n]; i < off[n + 1]; ++i) {
      const float* src = rows + list[i] * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += src[d];
    }
  }
}

void unpermute_backward(float* drows, const float* dy, const DispatchPlan& plan, int64_t D) {
  // forward y[n] = sum_{r: row_token[r] = n} rows[r]  =>  drows[r] = dy[row_token[r]]
  gather_rows(drows, dy, plan, D, "unpermute_backward");
}

}  // namespace ff::cpu
