// Token permutation for MoE dispatch (specs/parallelism-and-moe.md §7.2, §7.6).
// A DispatchPlan lists the permuted rows: expert-major, token-ascending inside an expert (a
// stable sort of the routing slots by expert). Each row carries its source token, the routing
// slot n*K + j it realises (or -1 for a pad row added by pad-to-capacity, whose prob is 0), and
// its gating prob. Legend: N tokens, K top-k, E experts, D width, R rows, C capacity.
#pragma once
#include <cstdint>
#include <vector>

namespace ff::cpu {

enum class DropPolicy : uint8_t { probs, position };

struct DispatchPlan {
  std::vector<int32_t> row_token;          // [R]
  std::vector<int32_t> row_slot;           // [R] n*K + j, or -1 for a pad row
  std::vector<float> row_prob;             // [R]
  std::vector<int64_t> tokens_per_expert;  // [E], sums to R
  int64_t num_rows() const { return static_cast<int64_t>(row_token.size()); }
};

// Capacity per expert from the local token count: C = min(ceil(N*K/E * factor), N).
int64_t expert_capacity(int64_t N, int64_t K, int64_t E, double capacity_factor);

// Token dropping: keep[N*K] = 1 where slot (n, j) survives. Per expert, among the slots routed
// to it: policy probs keeps the C with largest prob (ties: lower token index); policy position
// keeps the first C in token order.
void capacity_keep_mask(uint8_t* keep, const int32_t* topk_idx, const float* topk_probs, int64_t N,
                        int64_t K, int64_t E, int64_t C, DropPolicy policy);

// Build the plan from the routing (keep may be null: dropless). pad_to_capacity >= 0 makes every
// expert exactly that many rows: the kept routed slots, then fill-in pad rows (the lowest-index
// tokens without a kept row for that expert, prob 0); -1 means no padding; it must be <= N and
// no expert may keep more than that many slots. Reuses the plan's storage.
void build_dispatch_plan(DispatchPlan& plan, const int32_t* topk_idx, const float* topk_probs,
                         const uint8_t* keep, int64_t N, int64_t K, int64_t E,
                         int64_t pad_to_capacity);

// rows[r, :] = x[row_token[r], :]                                   (rows OVERWRITTEN)
void permute_forward(float* rows, const float* x, const DispatchPlan& plan, int64_t D);
// dx[row_token[r], :] += drows[r, :]  (ACCUMULATES; deterministic order: by row index)
void permute_backward(float* dx, const float* drows, const DispatchPlan& plan, int64_t N, int64_t D);
// y[n, :] = sum of rows[r, :] over r with row_token[r] == n, in row order   (y OVERWRITTEN;
// tokens with no rows get 0). Probs are NOT applied here: the experts already scaled their rows.
void unpermute_forward(float* y, const float* rows, const DispatchPlan& plan, int64_t N, int64_t D);
// drows[r, :] = dy[row_token[r], :]                                 (drows OVERWRITTEN)
void unpermute_backward(float* drows, const float* dy, const DispatchPlan& plan, int64_t D);

}  // namespace ff::cpu
