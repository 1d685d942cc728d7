// Load-balancing losses of the MoE router (specs/parallelism-and-moe.md §6.2-6.4), all of one
// form: rows fall into balancing groups (one group for the micro-batch and global losses, one per
// sequence for the sequence loss) and
//   L = c * sum_n sum_e counts[g(n), e] * s[n, e]
// where s are the aux-loss scores of the local rows, counts[g, e] the tokens of group g whose own
// top-K includes expert e (reduced over the ranks that hold the group, treated as constants) and
// c the scale the loss type derives (layers/moe/router.cpp). The Switch/GShard loss over T
// tokens is c = coeff E / (K T^2): then L = coeff E sum_e f_e P_e with f_e = counts[e] / (K T)
// and P_e = sum_n s[n, e] / T. All fp32 storage, double sums.
// Legend: N local rows, E experts, K top-k, G groups.
#pragma once
#include <cstdint>

#include "kernels/cpu/router.h"

namespace ff::cpu {

// Which group each local row falls in: row n is row first_row + n of the micro-batch's stream,
// whose groups are consecutive runs of `rows` rows (a sequence's rows under the sequence loss).
// rows = 0: every row is in group 0.
struct BalanceGroups {
  int64_t count = 1;      // G
  int64_t rows = 0;       // rows per group in the stream; 0 = one group
  int64_t first_row = 0;  // stream index of local row 0
  int64_t of(int64_t n) const { return rows > 0 ? (first_row + n) / rows : 0; }
};

// c = coeff * E / (K T^2): the micro-batch (Switch/GShard) loss over T tokens (§6.3).
inline double switch_loss_scale(double coeff, int64_t E, int64_t K, int64_t T) {
  return coeff * double(E) / (double(K) * double(T) * double(T));
}

// Aux-loss scores (§6.2): s = softmax(logits) over E (softmax score), or sigmoid(logits) /
// (row sum + 1e-20) (sigmoid score). counts[G, E] += per group the number of its rows whose own
// top-K of s (no bias, no group limit, before any dropping) includes expert e.
void aux_loss_scores(float* s, int64_t* counts, const float* logits, int64_t N, const BalanceGroups& groups,
                     const RouterOptions& opt);
// L = scale * sum_n sum_e counts[g(n), e] * s[n, e] over the N local rows.
double aux_loss_value(const float* s, const int64_t* counts, int64_t N, const BalanceGroups& groups, double scale,
                      const RouterOptions& opt);
// dlogits[N, E] += grad_scale * dL/dlogits, with dL/ds[n, e] = scale * counts[g(n), e] and s
// back-propagated through its softmax / normalised sigmoid. Counts are constants.
void aux_loss_backward(float* dlogits, const float* s, const int64_t* counts, const float* logits, int64_t N,
                       const BalanceGroups& groups, double scale, float grad_scale, const RouterOptions& opt);

}  // namespace ff::cpu
