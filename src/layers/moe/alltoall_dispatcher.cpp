#include "layers/moe/alltoall_dispatcher.h"

#include <cstring>

namespace ff {

void sort_chunks(float* out, const float* in, const std::vector<int64_t>& G, int64_t P, int64_t E_loc,
                 int64_t width, bool to_expert_major) {
  // Offsets of chunk (q, l) in the source-major layout and in the expert-major layout.
  std::vector<int64_t> src_major(static_cast<size_t>(P * E_loc)), exp_major(src_major.size());
  int64_t off = 0;
  for (int64_t q = 0; q < P; ++q)
    for (int64_t l = 0; l < E_loc; ++l) {
      src_major[static_cast<size_t>(q * E_loc + l)] = off;
      off += G[static_cast<size_t>(q * E_loc + l)];
    }
  off = 0;
  for (int64_t l = 0; l < E_loc; ++l)
    for (int64_t q = 0; q < P; ++q) {
      exp_major[static_cast<size_t>(q * E_loc + l)] = off;
      off += G[static_cast<size_t>(q * E_loc + l)];
    }
  for (size_t c = 0; c < G.size(); ++c) {
    const int64_t from = to_expert_major ? src_major[c] : exp_major[c];
    const int64_t to = to_expert_major ? exp_major[c] : src_major[c];
    std::memcpy(out + to * width, in + from * width, sizeof(float) * static_cast<size_t>(G[c] * width));
  }
}

AllToAllDispatcher::AllToAllDispatcher(const Communicator& ep, const Communicator& etp, const Communicator& etp_ep,
                                       int64_t num_experts, int64_t top_k, int64_t d_model)
    : ep_(ep), etp_(etp), etp_ep_(etp_ep), E_(num_experts), K_(top_k), D_(d_model),
      E_loc_(num_experts / ep.size()) {
  FF_CHECK(num_experts % ep.size() == 0, "model.num_experts = %lld is not divisible by parallel.ep = %d",
           (long long)num_experts, ep.size());
}

// State kept between the calls (DispatchState): send_rows[q] / recv_rows[q] rows exchanged with EP
// peer q; etp_rows[t] rows ETP rank t holds after the A2A; peer_expert_rows G[s][l], with source
// s = t * EP + q, the rows that ETP rank t of EP rank q sends to local expert l.
void AllToAllDispatcher::dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) {
  const int64_t P = ep_.size(), T = etp_.size(), S = sources(), my_t = etp_.rank();
  cpu::build_dispatch_plan(st.plan, routing.topk_idx, routing.topk_probs, routing.keep, N, K_, E_,
                           routing.pad_to_capacity);
  st.send_rows.assign(static_cast<size_t>(P), 0);
  for (int64_t e = 0; e < E_; ++e) st.send_rows[static_cast<size_t>(e / E_loc_)] += st.plan.tokens_per_expert[static_cast<size_t>(e)];
  std::vector<int64_t> all_counts(static_cast<size_t>(S * E_));
  etp_ep_.all_gather(all_counts.data(), st.plan.tokens_per_expert.data(), E_);
  st.peer_expert_rows.assign(static_cast<size_t>(S * E_loc_), 0);
  st.recv_rows.assign(static_cast<size_t>(P), 0);
  st.etp_rows.assign(static_cast<size_t>(T), 0);
  st.tokens_per_local_expert.assign(static_cast<size_t>(E_loc_), 0);
  const int64_t first = ep_.rank() * E_loc_;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t q = 0; q < P; ++q)
      for (int64_t l = 0; l < E_loc_; ++l) {
        const int64_t g = all_counts[static_cast<size_t>((t + T * q) * E_ + first + l)];
        st.peer_expert_rows[static_cast<size_t>((t * P + q) * E_loc_ + l)] = g;
        if (t == my_t) st.recv_rows[static_cast<size_t>(q)] += g;
        st.etp_rows[static_cast<size_t>(t)] += g;
        st.tokens_per_local_expert[static_cast<size_t>(l)] += g;
      }
  const int64_t R_send = st.plan.num_rows(), R_recv = st.etp_rows[static_cast<size_t>(my_t)];
  int64_t R = 0;
  for (int64_t r : st.etp_rows) R += r;

  float* send = arena.alloc_f32(R_send * D_);
  cpu::permute_forward(send, x, st.plan, D_);
  float* recv = arena.alloc_f32(R_recv * D_);
  float* recv_probs = arena.alloc_f32(R_recv);
  ep_.all_to_all_v(recv, st.recv_rows, send, st.send_rows, D_);
  ep_.all_to_all_v(recv_probs, st.recv_rows, st.plan.row_prob.data(), st.send_rows, 1);
  float* all = recv;
  float* all_probs = recv_probs;
  if (T > 1) {
    all = arena.alloc_f32(R * D_);
    all_probs = arena.alloc_f32(R);
    etp_.all_gather_v(all, recv, st.etp_rows, D_);
    etp_.all_gather_v(all_probs, recv_probs, st.etp_rows, 1);
  }
  st.rows = arena.alloc(Shape{R, D_});
  st.row_probs = arena.alloc(Shape{R});
  sort_chunks(st.rows.f32(), all, st.peer_expert_rows, S, E_loc_, D_, true);
  sort_chunks(st.row_probs.f32(), all_probs, st.peer_expert_rows, S, E_loc_, 1, true);
}


void AllToAllDispatcher::combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) {
  const int64_t R = st.rows.shape[0], R_send = st.plan.num_rows();
  scratch_.reset();
  float* back = scratch_.alloc_f32(R * D_);
  sort_chunks(back, expert_rows, st.peer_expert_rows, sources(), E_loc_, D_, false);
  const float* mine = etp_reduce(etp_, back, st.etp_rows, D_, scratch_);
  float* local = scratch_.alloc_f32(R_send * D_);
  ep_.all_to_all_v(local, st.send_rows, mine, st.recv_rows, D_);
  cpu::unpermute_forward(y, local, st.plan, N, D_);
}

void AllToAllDispatcher::combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) {
  const int64_t R = st.rows.shape[0], R_send = st.plan.num_rows();
  const int64_t R_recv = st.etp_rows[static_cast<size_t>(etp_.rank())];
  float* local = scratch.alloc_f32(R_send * D_);
  cpu::unpermute_backward(local, dy, st.plan, D_);
  float* recv = scratch.alloc_f32(R_recv * D_);
  ep_.all_to_all_v(recv, st.recv_rows, local, st.send_rows, D_);
  const float* all = recv;
  if (etp_.size() > 1) {  // reduce-scatter's adjoint
    float* g = scratch.alloc_f32(R * D_);
    etp_.all_gather_v(g, recv, st.etp_rows, D_);
    all = g;
  }
  sort_chunks(drows, all, st.peer_expert_rows, sources(), E_loc_, D_, true);
}

void AllToAllDispatcher::dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                                           const DispatchState& st, int64_t N) {
  const int64_t R = st.rows.shape[0], R_send = st.plan.num_rows();
  scratch_.reset();
  float* back = scratch_.alloc_f32(R * D_);
  float* back_probs = scratch_.alloc_f32(R);
  sort_chunks(back, drows, st.peer_expert_rows, sources(), E_loc_, D_, false);
  sort_chunks(back_probs, drow_probs, st.peer_expert_rows, sources(), E_loc_, 1, false);
  const float* mine = etp_reduce(etp_, back, st.etp_rows, D_, scratch_);  // all-gather's adjoint
  const float* mine_probs = etp_reduce(etp_, back_probs, st.etp_rows, 1, scratch_);
  float* local = scratch_.alloc_f32(R_send * D_);
  float* local_probs = scratch_.alloc_f32(R_send);
  ep_.all_to_all_v(local, st.send_rows, mine, st.recv_rows, D_);
  ep_.all_to_all_v(local_probs, st.send_rows, mine_probs, st.recv_rows, 1);
  cpu::permute_backward(dx, local, st.plan, N, D_);
  for (int64_t r = 0; r < R_send; ++r) {
    const int32_t slot = st.plan.row_slot[static_cast<size_t>(r)];
    if (slot >= 0) dtopk_probs[slot] += local_probs[r];
  }
}

int64_t AllToAllDispatcher::sent_rows(const DispatchState& st) const {
  int64_t rows = 0;
  for (int64_t q = 0; q < ep_.size(); ++q)
    if (q != ep_.rank()) rows += st.send_rows[static_cast<size_t>(q)];
  return rows;
}

}  // namespace ff
