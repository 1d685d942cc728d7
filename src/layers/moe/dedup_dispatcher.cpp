#include "layers/moe/dedup_dispatcher.h"

#include <algorithm>
#include <cstring>

namespace ff {

DedupAllToAllDispatcher::DedupAllToAllDispatcher(const Communicator& ep, const Communicator& etp,
                                                 const Communicator& etp_ep, int64_t num_experts, int64_t top_k,
                                                 int64_t d_model)
    : ep_(ep), etp_(etp), etp_ep_(etp_ep), E_(num_experts), K_(top_k), D_(d_model), E_loc_(num_experts / ep.size()) {
  FF_CHECK(num_experts % ep.size() == 0, "model.num_experts = %lld is not divisible by parallel.ep = %d",
           (long long)num_experts, ep.size());
}

namespace {

// The expert rows of U received tokens from their meta [U, 2K] (ids | probs, id -1 unused): a
// counting sort by local expert, tokens ascending within an expert (then entries in order), so
// the rows come in the AllToAllDispatcher's order. row_slot u K + k names the meta entry.
void build_expand_plan(cpu::DispatchPlan& plan, const float* meta, int64_t U, int64_t K, int64_t E_loc) {
  const int64_t W = 2 * K;
  plan.tokens_per_expert.assign(static_cast<size_t>(E_loc), 0);
  for (int64_t u = 0; u < U; ++u)
    for (int64_t k = 0; k < K; ++k) {
      const float l = meta[u * W + k];
      FF_CHECK(l >= -1 && l < static_cast<float>(E_loc), "dedup dispatch: received expert id %g outside [-1, %lld)",
               double(l), (long long)E_loc);
      if (l >= 0) ++plan.tokens_per_expert[static_cast<size_t>(l)];
    }
  std::vector<int64_t> next(static_cast<size_t>(E_loc), 0);
  int64_t R = 0;
  for (int64_t l = 0; l < E_loc; ++l) {
    next[static_cast<size_t>(l)] = R;
    R += plan.tokens_per_expert[static_cast<size_t>(l)];
  }
  plan.row_token.assign(static_cast<size_t>(R), 0);
  plan.row_slot.assign(static_cast<size_t>(R), 0);
  plan.row_prob.assign(static_cast<size_t>(R), 0.0f);
  for (int64_t u = 0; u < U; ++u)
    for (int64_t k = 0; k < K; ++k) {
      const float l = meta[u * W + k];
      if (l < 0) continue;
      const size_t r = static_cast<size_t>(next[static_cast<size_t>(l)]++);
      plan.row_token[r] = static_cast<int32_t>(u);
      plan.row_slot[r] = static_cast<int32_t>(u * K + k);
      plan.row_prob[r] = meta[u * W + K + k];
    }
}

}  // namespace

// The entries of this rank's tokens: one per (token n, EP rank q) where n has a kept slot on one
// of q's experts, q-major and n ascending (plan.row_token[i] = n; row_slot -1 and row_prob 0, its
// tokens_per_expert unused); meta[i] = [l_0 .. l_{K-1} | p_0 .. p_{K-1}] the local expert ids
// (-1: unused) and probs of n's slots on q in slot order, and entry_slot[i K + k] those slots;
// send_rows[q] the entries for q.
void DedupAllToAllDispatcher::plan_entries(DispatchState& st, std::vector<float>& meta, const Routing& routing,
                                           int64_t N) const {
  const int64_t P = ep_.size(), K = K_, W = 2 * K;
  st.plan.row_token.clear();
  st.plan.row_slot.clear();
  st.plan.row_prob.clear();
  st.entry_slot.clear();
  st.send_rows.assign(static_cast<size_t>(P), 0);
  meta.clear();
  auto on = [&](int64_t slot, int64_t q) {
    return routing.topk_idx[slot] / E_loc_ == q && (routing.keep == nullptr || routing.keep[slot]);
  };
  for (int64_t q = 0; q < P; ++q)
    for (int64_t n = 0; n < N; ++n) {
      bool any = false;
      for (int64_t j = 0; j < K; ++j) any = any || on(n * K + j, q);
      if (!any) continue;
      st.plan.row_token.push_back(static_cast<int32_t>(n));
      st.plan.row_slot.push_back(-1);
      st.plan.row_prob.push_back(0.0f);
      const size_t first = st.entry_slot.size(), m0 = meta.size();
      st.entry_slot.resize(first + static_cast<size_t>(K), -1);
      meta.resize(m0 + static_cast<size_t>(W), 0.0f);
      std::fill(meta.begin() + static_cast<std::ptrdiff_t>(m0), meta.begin() + static_cast<std::ptrdiff_t>(m0 + K), -1.0f);
      for (int64_t j = 0, k = 0; j < K; ++j) {
        const int64_t slot = n * K + j;
        if (!on(slot, q)) continue;
        st.entry_slot[first + static_cast<size_t>(k)] = static_cast<int32_t>(slot);
        meta[m0 + static_cast<size_t>(k)] = static_cast<float>(routing.topk_idx[slot] - q * E_loc_);
        meta[m0 + static_cast<size_t>(K + k)] = routing.topk_probs[slot];
        ++k;
      }
      ++st.send_rows[static_cast<size_t>(q)];
    }
}

// Entries received from each EP peer (recv_rows) and held by each ETP rank (etp_rows), from the
// counts all-gathered over ETP x EP: c[(t + T q) P + r] entries member (t, q) sends to EP rank r.
void DedupAllToAllDispatcher::exchange_counts(DispatchState& st) const {
  const int64_t P = ep_.size(), T = etp_.size(), me = ep_.rank(), my_t = etp_.rank();
  std::vector<int64_t> all_counts(static_cast<size_t>(T * P * P));
  etp_ep_.all_gather(all_counts.data(), st.send_rows.data(), P);
  st.recv_rows.assign(static_cast<size_t>(P), 0);
  st.etp_rows.assign(static_cast<size_t>(T), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t q = 0; q < P; ++q) {
      const int64_t c = all_counts[static_cast<size_t>((t + T * q) * P + me)];
      if (t == my_t) st.recv_rows[static_cast<size_t>(q)] = c;
      st.etp_rows[static_cast<size_t>(t)] += c;
    }
}

static int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// Forward: the entries (plan_entries), their counts (exchange_counts), an A2A-v of the entries'
// rows [D] and meta [2K] over EP and an all-gather-v over ETP (U tokens in source order (t, q)),
// then st.expand: the U tokens' expert rows (expert-major, token ascending, the order of the
// AllToAllDispatcher's rows) and rows = their hidden states.
void DedupAllToAllDispatcher::dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N,
                                       Arena& arena) {
  FF_CHECK(routing.pad_to_capacity < 0, "moe_dispatcher = alltoall_dedup does not pad experts to capacity: set "
           "model.moe_pad_to_capacity = false or use moe_dispatcher = alltoall");
  const int64_t W = 2 * K_;
  st.local_tokens = N;
  std::vector<float> meta;
  plan_entries(st, meta, routing, N);
  exchange_counts(st);
  const int64_t sent = st.plan.num_rows(), mine = st.etp_rows[static_cast<size_t>(etp_.rank())], U = sum(st.etp_rows);
  float* send = arena.alloc_f32(sent * D_);
  cpu::permute_forward(send, x, st.plan, D_);
  float* recv = arena.alloc_f32(mine * D_);
  float* recv_meta = arena.alloc_f32(mine * W);
  ep_.all_to_all_v(recv, st.recv_rows, send, st.send_rows, D_);
  ep_.all_to_all_v(recv_meta, st.recv_rows, meta.data(), st.send_rows, W);
  float* tokens = recv;
  float* all_meta = recv_meta;
  if (etp_.size() > 1) {
    tokens = arena.alloc_f32(U * D_);
    all_meta = arena.alloc_f32(U * W);
    etp_.all_gather_v(tokens, recv, st.etp_rows, D_);
    etp_.all_gather_v(all_meta, recv_meta, st.etp_rows, W);
  }
  build_expand_plan(st.expand, all_meta, U, K_, E_loc_);
  st.tokens_per_local_expert = st.expand.tokens_per_expert;
  const int64_t R = st.expand.num_rows();
  st.rows = arena.alloc(Shape{R, D_});
  st.row_probs = arena.alloc(Shape{R});
  cpu::permute_forward(st.rows.f32(), tokens, st.expand, D_);
  std::copy(st.expand.row_prob.begin(), st.expand.row_prob.end(), st.row_probs.f32());
}


// Combine: per received token the sum of its local experts' rows (already prob-weighted), the
// ETP slices summed, one row back per entry, and per token the sum over its destinations.
void DedupAllToAllDispatcher::combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) {
  const int64_t U = sum(st.etp_rows), sent = st.plan.num_rows();
  scratch_.reset();
  float* per_token = scratch_.alloc_f32(U * D_);
  cpu::unpermute_forward(per_token, expert_rows, st.expand, U, D_);
  const float* mine = etp_reduce(etp_, per_token, st.etp_rows, D_, scratch_);
  float* back = scratch_.alloc_f32(sent * D_);
  ep_.all_to_all_v(back, st.send_rows, mine, st.recv_rows, D_);
  cpu::unpermute_forward(y, back, st.plan, N, D_);
}

void DedupAllToAllDispatcher::combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) {
  const int64_t U = sum(st.etp_rows), sent = st.plan.num_rows();
  const int64_t mine = st.etp_rows[static_cast<size_t>(etp_.rank())];
  float* dsent = scratch.alloc_f32(sent * D_);
  cpu::unpermute_backward(dsent, dy, st.plan, D_);
  float* drecv = scratch.alloc_f32(mine * D_);
  ep_.all_to_all_v(drecv, st.recv_rows, dsent, st.send_rows, D_);
  const float* dtok = drecv;
  if (etp_.size() > 1) {  // reduce-scatter's adjoint
    float* g = scratch.alloc_f32(U * D_);
    etp_.all_gather_v(g, drecv, st.etp_rows, D_);
    dtok = g;
  }
  cpu::unpermute_backward(drows, dtok, st.expand, D_);
}

void DedupAllToAllDispatcher::dispatch_backward(float* dx, float* dtopk_probs, const float* drows,
                                                const float* drow_probs, const DispatchState& st, int64_t N) {
  const int64_t U = sum(st.etp_rows), sent = st.plan.num_rows(), K = K_, W = 2 * K;
  const int64_t R = st.expand.num_rows();
  scratch_.reset();
  // Per received token: the sum of its rows' gradients, and each entry's prob gradient (the id
  // half of the meta carries none).
  float* dtok = scratch_.alloc_f32(U * D_);
  std::memset(dtok, 0, sizeof(float) * static_cast<size_t>(U * D_));
  cpu::permute_backward(dtok, drows, st.expand, U, D_);
  float* dmeta = scratch_.alloc_f32(U * W);
  std::memset(dmeta, 0, sizeof(float) * static_cast<size_t>(U * W));
  for (int64_t r = 0; r < R; ++r) {
    const int64_t slot = st.expand.row_slot[static_cast<size_t>(r)];  // u K + k
    dmeta[(slot / K) * W + K + slot % K] += drow_probs[r];
  }
  const float* mine = etp_reduce(etp_, dtok, st.etp_rows, D_, scratch_);  // all-gather's adjoint
  const float* mine_meta = etp_reduce(etp_, dmeta, st.etp_rows, W, scratch_);
  float* back = scratch_.alloc_f32(sent * D_);
  float* back_meta = scratch_.alloc_f32(sent * W);
  ep_.all_to_all_v(back, st.send_rows, mine, st.recv_rows, D_);
  ep_.all_to_all_v(back_meta, st.send_rows, mine_meta, st.recv_rows, W);
  cpu::permute_backward(dx, back, st.plan, N, D_);
  for (int64_t i = 0; i < sent; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t slot = st.entry_slot[static_cast<size_t>(i * K + k)];
      if (slot >= 0) dtopk_probs[slot] += back_meta[i * W + K + k];
    }
}

int64_t DedupAllToAllDispatcher::sent_rows(const DispatchState& st) const {
  int64_t rows = 0;
  for (int64_t q = 0; q < ep_.size(); ++q)
    if (q != ep_.rank()) rows += st.send_rows[static_cast<size_t>(q)];
  return rows;
}

}  // namespace ff
