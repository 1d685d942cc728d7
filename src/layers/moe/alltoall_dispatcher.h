// All-to-all token dispatcher over the expert-parallel group (specs/parallelism-and-moe.md §7.4,
// ETP = 1). Rank r owns experts [r E_loc, (r+1) E_loc). Forward:
//   permute local tokens by expert (rows for EP peer q are contiguous, experts being owned
//   contiguously) -> exchange per-expert counts (all-gather over EP) -> A2A-v of rows and probs ->
//   received rows are ordered (source q, local expert l); reorder the chunks to (l, q) so each
//   local expert's rows are contiguous -> experts.
// Combine is the exact reverse, ending in the scatter-add of unpermute. Backward of each step is
// its adjoint: A2A with the counts swapped, the inverse chunk order, gather <-> scatter-add.
// Legend: N local tokens, K top-k, E experts, E_loc = E / EP, D width, R rows.
#pragma once
#include "layers/moe/dispatcher.h"
#include "parallel/comm.h"

namespace ff {

class AllToAllDispatcher final : public TokenDispatcher {
 public:
  AllToAllDispatcher(const Communicator& ep, int64_t num_experts, int64_t top_k, int64_t d_model);
  void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) override;
  void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) override;
  void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) override;
  void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                         const DispatchState& st, int64_t N) override;

 private:
  const Communicator& ep_;
  int64_t E_, K_, D_, E_loc_;
  Arena scratch_;  // combine's temporaries (combine has no caller arena)
};

// Reorders row chunks between (source q, local expert l) order and (l, q) order.
// G[q * E_loc + l] = chunk sizes; to_expert_major: (q, l) -> (l, q), else the inverse.
// Exposed for tests.
void sort_chunks(float* out, const float* in, const std::vector<int64_t>& G, int64_t P, int64_t E_loc,
                 int64_t width, bool to_expert_major);

}  // namespace ff
