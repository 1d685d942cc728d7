#include "layers/moe/dispatcher.h"

#include <algorithm>

#include "layers/moe/allgather_dispatcher.h"
#include "layers/moe/alltoall_dispatcher.h"
#include "layers/moe/dedup_dispatcher.h"
#include "parallel/grid.h"

namespace ff {

std::unique_ptr<TokenDispatcher> make_dispatcher(const ParallelGrid& grid, int64_t num_experts, int64_t top_k,
                                                 int64_t d_model) {
  if (grid.etp_ep().size() == 1) return std::make_unique<LocalDispatcher>(num_experts, top_k, d_model);
  if (grid.config().moe_dispatcher == MoeDispatcher::allgather)
    return std::make_unique<AllGatherDispatcher>(grid.etp_ep(), grid.ep().rank(), grid.ep().size(), num_experts,
                                                 top_k, d_model);
  if (grid.config().moe_dispatcher == MoeDispatcher::alltoall_dedup)
    return std::make_unique<DedupAllToAllDispatcher>(grid.ep(), grid.etp(), grid.etp_ep(), num_experts, top_k, d_model);
  return std::make_unique<AllToAllDispatcher>(grid.ep(), grid.etp(), grid.etp_ep(), num_experts, top_k, d_model);
}

void LocalDispatcher::dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) {
  cpu::build_dispatch_plan(st.plan, routing.topk_idx, routing.topk_probs, routing.keep, N, K_, E_,
                           routing.pad_to_capacity);
  st.tokens_per_local_expert = st.plan.tokens_per_expert;
  const int64_t R = st.plan.num_rows();
  st.rows = arena.alloc(Shape{R, D_});
  st.row_probs = arena.alloc(Shape{R});
  cpu::permute_forward(st.rows.f32(), x, st.plan, D_);
  std::copy(st.plan.row_prob.begin(), st.plan.row_prob.end(), st.row_probs.f32());
}

void LocalDispatcher::combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) {
  cpu::unpermute_forward(y, expert_rows, st.plan, N, D_);
}

void LocalDispatcher::combine_backward(float* drows, const float* dy, const DispatchState& st, Arena&) {
  cpu::unpermute_backward(drows, dy, st.plan, D_);
}

void LocalDispatcher::dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                                        const DispatchState& st, int64_t N) {
  cpu::permute_backward(dx, drows, st.plan, N, D_);
  // A row's prob is topk_probs[slot]; pad rows (slot -1) carry a constant 0.
  const int64_t R = st.plan.num_rows();
  for (int64_t r = 0; r < R; ++r) {
    int32_t slot = st.plan.row_slot[static_cast<size_t>(r)];
    if (slot >= 0) dtopk_probs[slot] += drow_probs[r];
  }
}

const float* etp_reduce(const Communicator& etp, const float* all, const std::vector<int64_t>& etp_rows, int64_t width,
                        Arena& arena) {
  if (etp.size() == 1) return all;
  float* mine = arena.alloc_f32(etp_rows[static_cast<size_t>(etp.rank())] * width);
  etp.reduce_scatter_v(mine, all, etp_rows, width);
  return mine;
}

}  // namespace ff
