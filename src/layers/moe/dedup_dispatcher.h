// All-to-all dispatcher that sends each token once per destination EP rank (DeepSeek-V3's
// node-limited dispatch, DeepEP's token-level all-to-all): the all-to-all carries a token's
// hidden state to an EP rank once, with the local ids and probs of its experts there (K (id,
// prob) pairs, id -1 where unused), and the receiver expands it into one row per expert. Combine
// sums a token's expert outputs on each rank before sending one row back, and the source sums its
// destinations' rows. With group-limited routing whose groups sit on EP ranks (moe_router_groups a
// multiple of EP), a token reaches at most moe_router_group_topk ranks, so the all-to-all moves
// at most that many rows per token however large K is (the AllToAllDispatcher moves K).
// ETP works as in the AllToAllDispatcher: received tokens are all-gathered over ETP, and the
// partial outputs of the ETP slices reduce-scattered back. Pad-to-capacity is not supported (its
// fill-in rows are per expert, not per token); capacity dropping is.
// Legend: N local tokens, K top-k, E experts, EP = P ranks of E_loc = E / P experts, U tokens
// received (over ETP), R expert rows, D width.
#pragma once
#include <vector>

#include "layers/moe/dispatcher.h"
#include "parallel/comm.h"

namespace ff {

class DedupAllToAllDispatcher final : public TokenDispatcher {
 public:
  DedupAllToAllDispatcher(const Communicator& ep, const Communicator& etp, const Communicator& etp_ep,
                          int64_t num_experts, int64_t top_k, int64_t d_model);
  void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) override;
  void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) override;
  void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) override;
  void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                         const DispatchState& st, int64_t N) override;
  int64_t sent_rows(const DispatchState& st) const override;

 private:
  void plan_entries(DispatchState& st, std::vector<float>& meta, const Routing& routing, int64_t N) const;
  void exchange_counts(DispatchState& st) const;

  const Communicator& ep_;
  const Communicator& etp_;
  const Communicator& etp_ep_;  // member index t + ETP * q
  int64_t E_, K_, D_, E_loc_;
  Arena scratch_;  // temporaries of the calls that get no caller arena
};

}  // namespace ff
