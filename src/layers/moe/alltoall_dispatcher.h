// All-to-all token dispatcher over the expert-parallel group, with expert-tensor parallelism
// inside (specs/parallelism-and-moe.md §7.4). EP rank q owns experts [q E_loc, (q+1) E_loc); the
// ETP ranks of an EP rank each hold a 1/ETP slice of those experts' hidden width. Forward:
//   permute local tokens by expert (rows for EP peer q are contiguous, experts being owned
//   contiguously) -> exchange per-expert counts (all-gather over ETP x EP) -> A2A-v of rows and
//   probs over EP -> all-gather-v over ETP (every ETP rank computes every row, on its slice) ->
//   rows are ordered by source (t, q) then local expert l; reorder the chunks to (l, t, q) so each
//   local expert's rows are contiguous -> experts.
// Combine is the exact reverse: chunks back, reduce-scatter-v over ETP (summing the slices'
// partial outputs), A2A-v back over EP, then the scatter-add of unpermute. Backward of each step is
// its adjoint: A2A with the counts swapped, all-gather <-> reduce-scatter, the inverse chunk
// order, gather <-> scatter-add.
// Legend: N local tokens, K top-k, E experts, E_loc = E / EP, D width, R rows.
#pragma once
#include "layers/moe/dispatcher.h"
#include "parallel/comm.h"

namespace ff {

class AllToAllDispatcher final : public TokenDispatcher {
 public:
  AllToAllDispatcher(const Communicator& ep, const Communicator& etp, const Communicator& etp_ep, int64_t num_experts,
                     int64_t top_k, int64_t d_model);
  void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) override;
  void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) override;
  void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) override;
  void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                         const DispatchState& st, int64_t N) override;
  int64_t sent_rows(const DispatchState& st) const override;

 private:
  const Communicator& ep_;
  const Communicator& etp_;
  const Communicator& etp_ep_;  // member index t + ETP * q
  int64_t E_, K_, D_, E_loc_;
  Arena scratch_;  // temporaries of the calls that get no caller arena
  int64_t sources() const { return static_cast<int64_t>(ep_.size()) * etp_.size(); }
};

// Reorders row chunks between source-major (source s, local expert l) order and expert-major
// (l, s) order. G[s * E_loc + l] = chunk sizes; to_expert_major: (s, l) -> (l, s), else the
// inverse. Exposed for tests.
void sort_chunks(float* out, const float* in, const std::vector<int64_t>& G, int64_t P, int64_t E_loc,
                 int64_t width, bool to_expert_major);

}  // namespace ff
