// Token dispatcher interface (specs/parallelism-and-moe.md §7): moves each token's routed copies
// to the ranks owning their experts, and the expert outputs back. Forward: dispatch -> experts ->
// combine. Backward mirrors it: combine_backward -> experts backward -> dispatch_backward.
// LocalDispatcher is the single-rank implementation (all experts local); the all-to-all and
// all-gather dispatchers of expert parallelism implement the same interface.
// Legend: N local tokens, K top-k, E experts, D width, R rows received for the local experts.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/permute.h"
#include "parallel/comm.h"

namespace ff {

// Routing decisions for one micro-batch, after capacity dropping.
struct Routing {
  const int32_t* topk_idx = nullptr;    // [N, K]
  const float* topk_probs = nullptr;    // [N, K]
  const uint8_t* keep = nullptr;        // [N, K] or null (dropless)
  int64_t pad_to_capacity = -1;         // rows per expert when padding, else -1
};

// What a dispatch leaves for the rest of the layer and for backward.
struct DispatchState {
  cpu::DispatchPlan plan;                      // local permutation (of the tokens this rank routes)
  std::vector<int64_t> tokens_per_local_expert;
  Tensor rows;       // [R, D] tokens for the local experts, expert-major
  Tensor row_probs;  // [R] their gating probs
  // Expert-parallel dispatchers: rows exchanged with each EP peer, rows per ETP rank, and
  // G[s * E_loc + l] = rows that source s sends to local expert l.
  std::vector<int64_t> send_rows, recv_rows, peer_expert_rows, etp_rows;
  int64_t local_tokens = 0;  // N
  // DedupAllToAllDispatcher: plan holds one entry per (token, destination rank), destination-major;
  // expand turns the U received tokens into expert rows (row_slot u K + k: the k-th expert entry of
  // received token u); entry_slot[i K + k] is the routing slot n K + j of sent entry i's k-th
  // expert (-1: unused).
  cpu::DispatchPlan expand;
  std::vector<int32_t> entry_slot;
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  virtual void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) = 0;
  // y[N, D] overwritten with the sum of each token's expert outputs (already prob-weighted).
  virtual void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) = 0;
  // drows[R, D] overwritten from dy[N, D].
  virtual void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) = 0;
  // dx[N, D] += ; dtopk_probs[N, K] += the gradients of the rows and row probs.
  virtual void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                                 const DispatchState& st, int64_t N) = 0;
  // Rows of width D this rank sent to other ranks in the dispatch of st (the volume measure of
  // group-limited routing; the combine returns as many).
  virtual int64_t sent_rows(const DispatchState& st) const = 0;
};

// The dispatcher a layer uses, chosen from the parallel layout (EP = 1: LocalDispatcher).
std::unique_ptr<TokenDispatcher> make_dispatcher(const class ParallelGrid& grid, int64_t num_experts, int64_t top_k,
                                                 int64_t d_model);

class LocalDispatcher final : public TokenDispatcher {
 public:
  LocalDispatcher(int64_t num_experts, int64_t top_k, int64_t d_model)
      : E_(num_experts), K_(top_k), D_(d_model) {}
  void dispatch(DispatchState& st, const float* x, const Routing& routing, int64_t N, Arena& arena) override;
  void combine(float* y, const float* expert_rows, const DispatchState& st, int64_t N) override;
  void combine_backward(float* drows, const float* dy, const DispatchState& st, Arena& scratch) override;
  void dispatch_backward(float* dx, float* dtopk_probs, const float* drows, const float* drow_probs,
                         const DispatchState& st, int64_t N) override;
  int64_t sent_rows(const DispatchState&) const override { return 0; }

 private:
  int64_t E_, K_, D_;
};

// The expert-tensor-parallel reduction after the experts: each ETP rank computed a partial result
// of every row [sum(etp_rows), width]; returns this rank's block [etp_rows[rank], width], summed
// over the slices (reduce-scatter; `all` itself when ETP = 1).
const float* etp_reduce(const Communicator& etp, const float* all, const std::vector<int64_t>& etp_rows, int64_t width,
                        Arena& arena);

}  // namespace ff
