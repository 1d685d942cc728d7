#include "layers/moe/allgather_dispatcher.h"

#include <cstring>

namespace ff {

AllGatherDispatcher::AllGatherDispatcher(const Communicator& domain, int64_t ep_rank, int64_t ep_size,
                                         int64_t num_experts, int64_t top_k, int64_t d_model)
    : ep_(domain), ep_rank_(ep_rank), E_(num_experts), K_(top_k), D_(d_model), E_loc_(num_experts / ep_size) {
  FF_CHECK(num_experts % ep_size == 0, "model.num_experts = %lld is not divisible by parallel.ep = %lld",
           (long long)num_experts, (long long)ep_size);
}

void AllGatherDispatcher::dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) {
  const int64_t P = ep_.size(), NK = N * K_;
  st.local_tokens = N;
  // Gather tokens and the routing (expert id, prob, kept) of every slot; ids are small integers,
  // exact in fp32.
  float* xg = arena.alloc_f32(P * N * D_);
  ep_.all_gather(xg, x, N * D_);
  float* packed = arena.alloc_f32(3 * NK);
  for (int64_t i = 0; i < NK; ++i) {
    packed[3 * i] = static_cast<float>(routing.topk_idx[i]);
    packed[3 * i + 1] = routing.topk_probs[i];
    packed[3 * i + 2] = routing.keep ? static_cast<float>(routing.keep[i]) : 1.0f;
  }
  float* gathered = arena.alloc_f32(3 * NK * P);
  ep_.all_gather(gathered, packed, 3 * NK);
  std::vector<int32_t> idx(static_cast<size_t>(P * NK));
  std::vector<float> probs(idx.size());
  std::vector<uint8_t> keep(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    idx[i] = static_cast<int32_t>(gathered[3 * i]);
    probs[i] = gathered[3 * i + 1];
    keep[i] = gathered[3 * i + 2] != 0.0f;
  }
  cpu::DispatchPlan all;
  cpu::build_dispatch_plan(all, idx.data(), probs.data(), keep.data(), P * N, K_, E_, -1);
  // Keep the rows of my experts: a contiguous range of the expert-major plan.
  const int64_t first = ep_rank_ * E_loc_;
  int64_t begin = 0;
  for (int64_t e = 0; e < first; ++e) begin += all.tokens_per_expert[static_cast<size_t>(e)];
  st.tokens_per_local_expert.assign(all.tokens_per_expert.begin() + first, all.tokens_per_expert.begin() + first + E_loc_);
  int64_t R = 0;
  for (int64_t n : st.tokens_per_local_expert) R += n;
  st.plan.row_token.assign(all.row_token.begin() + begin, all.row_token.begin() + begin + R);
  st.plan.row_slot.assign(all.row_slot.begin() + begin, all.row_slot.begin() + begin + R);
  st.plan.row_prob.assign(all.row_prob.begin() + begin, all.row_prob.begin() + begin + R);
  st.plan.tokens_per_expert = st.tokens_per_local_expert;
  st.rows = arena.alloc(Shape{R, D_});
  st.row_probs = arena.alloc(Shape{R});
  cpu::permute_forward(st.rows.f32(), xg, st.plan, D_);
  std::memcpy(st.row_probs.f32(), st.plan.row_prob.data(), sizeof(float) * static_cast<size_t>(R));
}

void AllGatherDispatcher::combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) {
  const int64_t P = ep_.size();
  scratch_.reset();
  float* yg = scratch_.alloc_f32(P * N * D_);
  cpu::unpermute_forward(yg, expert_rows, st.plan, P * N, D_);
  ep_.reduce_scatter(y, yg, N * D_);
}

void AllGatherDispatcher::combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) {
  const int64_t P = ep_.size(), N = st.local_tokens;
  float* dyg = scratch.alloc_f32(P * N * D_);
  ep_.all_gather(dyg, dy, N * D_);
  cpu::unpermute_backward(drows, dyg, st.plan, D_);
}

void AllGatherDispatcher::dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                                            const DispatchState& st, int64_t N) {
  const int64_t P = ep_.size(), NK = N * K_;
  scratch_.reset();
  float* dxg = scratch_.alloc_f32(P * N * D_);
  std::memset(dxg, 0, sizeof(float) * static_cast<size_t>(P * N * D_));
  cpu::permute_backward(dxg, drows, st.plan, P * N, D_);
  float* dx_mine = scratch_.alloc_f32(N * D_);
  ep_.reduce_scatter(dx_mine, dxg, N * D_);
  for (int64_t i = 0; i < N * D_; ++i) dx[i] += dx_mine[i];
  float* dpg = scratch_.alloc_f32(P * NK);
  std::memset(dpg, 0, sizeof(float) * static_cast<size_t>(P * NK));
  for (int64_t r = 0; r < st.plan.num_rows(); ++r) dpg[st.plan.row_slot[static_cast<size_t>(r)]] += drow_probs[r];
  float* dp_mine = scratch_.alloc_f32(NK);
  ep_.reduce_scatter(dp_mine, dpg, NK);
  for (int64_t i = 0; i < NK; ++i) dtopk_probs[i] += dp_mine[i];
}

}  // namespace ff
