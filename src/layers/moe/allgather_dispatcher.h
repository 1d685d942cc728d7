// All-gather token dispatcher over the expert-parallel group (specs/parallelism-and-moe.md §7.3,
// ETP = 1): every rank gathers all ranks' tokens and routing, computes its own experts' rows, and
// one reduce-scatter returns each token's summed expert outputs to its owner (the other ranks'
// contributions to a token are zero there). Backward: the all-gather's adjoint is the
// reduce-scatter and vice versa. Simple and memory-heavy; good for small EP or large K.
// Pad-to-capacity rows carry prob 0 and contribute nothing, so this dispatcher computes only the
// kept rows (identical results, less work).
// Legend: N local tokens, P = EP, K top-k, E experts, E_loc = E / P, D width.
#pragma once
#include "layers/moe/dispatcher.h"
#include "parallel/comm.h"

namespace ff {

class AllGatherDispatcher final : public TokenDispatcher {
 public:
  AllGatherDispatcher(const Communicator& ep, int64_t num_experts, int64_t top_k, int64_t d_model);
  void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) override;
  void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) override;
  void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) override;
  void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                         const DispatchState& st, int64_t N) override;

 private:
  const Communicator& ep_;
  int64_t E_, K_, D_, E_loc_;
  Arena scratch_;
};

}  // namespace ff
