// All-gather token dispatcher over the ETP x EP group (specs/parallelism-and-moe.md §7.3): every
// rank gathers all of the group's tokens and routing, computes its EP rank's experts (on its ETP
// slice of their hidden width) for them, and one reduce-scatter returns to each token's owner the
// sum of the ETP slices' partial outputs and of the EP ranks' experts (zero where a rank had none). Backward: the all-gather's adjoint is the
// reduce-scatter and vice versa. Simple and memory-heavy; good for small EP or large K.
// Pad-to-capacity rows carry prob 0 and contribute nothing, so this dispatcher computes only the
// kept rows (identical results, less work).
// Legend: N local tokens, P = ETP x EP, K top-k, E experts, E_loc = E / EP, D width.
#pragma once
#include "layers/moe/dispatcher.h"
#include "parallel/comm.h"

namespace ff {

class AllGatherDispatcher final : public TokenDispatcher {
 public:
  // domain: the ETP x EP group; ep_rank / ep_size: this rank's place among the expert owners.
  AllGatherDispatcher(const Communicator& domain, int64_t ep_rank, int64_t ep_size, int64_t num_experts,
                      int64_t top_k, int64_t d_model);
  void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) override;
  void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) override;
  void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) override;
  void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                         const DispatchState& st, int64_t N) override;
  // Every token goes to every other rank of the domain.
  int64_t sent_rows(const DispatchState& st) const override { return st.local_tokens * (ep_.size() - 1); }

 private:
  const Communicator& ep_;  // the gather domain (ETP x EP)
  int64_t ep_rank_, E_, K_, D_, E_loc_;
  Arena scratch_;
};

}  // namespace ff
