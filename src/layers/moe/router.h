// MoE router layer (specs/parallelism-and-moe.md §6): fp32 logits = x W^T, gating by the chosen
// score function and top-k (optionally group-limited), the load-balancing loss of the chosen type
// and the z-loss, whose gradients are injected here (never added to the LM loss), and the
// optional aux-loss-free expert bias.
// Legend: N local tokens, D width, E experts, K top-k, B sequences of the micro-batch, S their
// length, M micro-batches of the step, DP data-parallel replicas.
//
// The load-balancing losses (model.moe_load_balancing, coefficient alpha = moe_aux_loss_coeff;
// s are the aux-loss scores and c the counts of kernels/cpu/aux_loss.h, counts held constant):
//   aux_loss        per micro-batch: c_e summed over TP x CP (every token of the micro-batch),
//                   T = N |TP x CP|;  L = alpha E / (K T^2) sum_e c_e sum_{n local} s[n, e].
//   seq_aux_loss    per sequence (DeepSeek-V2/V3; Megatron's seq_aux_loss): c_{b,e} of sequence b
//                   summed over TP x CP (a sequence spans the CP ranks, and under SP each TP rank
//                   holds a run of its rows), T = S;  L = (alpha / B) sum_b E / (K S^2)
//                   sum_e c_{b,e} sum_{n of b, local} s[n, e]. A sequence is a row of the
//                   micro-batch (a row of packed SFT examples counts as one).
//   global_aux_loss over the step's global batch (Megatron's global_aux_loss with the DP factor of
//                   its PR #3769): at the m-th training micro-batch of the step, c^(m)_e summed
//                   over TP x DP x CP (every replica's m-th micro-batch) is added to a running sum
//                   C_e = c^(1)_e + .. + c^(m)_e; with T = N |TP x DP x CP| the tokens of one
//                   micro-batch over the replicas, L = DP alpha E / (K T^2) sum_e (C_e / m)
//                   sum_{n local} s[n, e]: summed over the TP x CP ranks of a replica and averaged
//                   over the replicas (the data-parallel reduction) this is alpha E sum_e f_e P_e,
//                   with f_e = C_e / (m K T) the fraction of the step's tokens so far that chose e
//                   and P_e the mean score of e over this micro-batch of every replica. A later
//                   micro-batch's counts cannot reach an earlier one's gradient without
//                   recomputing it, so the m-th micro-batch balances against the first m; the
//                   last one against the whole step. The running sum is reset by end_of_step().
//                   Evaluation forwards (Compute::training() off) neither add to it nor compute the
//                   loss.
// Each rank's value is its share of the micro-batch's loss; forward reports the sum over TP x CP.
// The gradients are scaled by backward's loss_scale (CP / M, §6.6) like the LM loss's.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/cpu/aux_loss.h"
#include "kernels/cpu/router.h"
#include "layers/model_config.h"
#include "parallel/grid.h"

namespace ff {

// Where a rank's tokens sit in its micro-batch, for the losses that need it.
struct RouterBatch {
  int64_t sequences = 1;  // B
  int64_t stream_rows = 0;  // rows of the micro-batch on this CP rank over the TP group (B x S / CP)
  int64_t first_row = 0;  // stream row of this rank's first token (its sequence-parallel share)
  bool training = true;   // false: no load-balancing loss (evaluation, decoding)
};

class Router {
 public:
  // Aux-loss token counts are summed over grid.tp_cp() (the ranks that hold one micro-batch);
  // global-batch counts and expert-bias loads over grid.tp_dp_cp() (every rank's tokens, §6.7).
  Router(ParamStore& store, const std::string& prefix, const ModelConfig& cfg, const ParallelGrid& grid);

  struct Saved {
    Tensor logits;      // [N, E]
    Tensor scores;      // [N, E] gating scores saved for backward
    Tensor topk_idx;    // [N, K] int32 stored in 4-byte slots
    Tensor topk_probs;  // [N, K]
    Tensor aux_scores;  // [N, E] (a balancing loss on)
    Tensor z_lse;       // [N] (z-loss on)
    std::vector<int64_t> counts;  // [G, E] balancing counts as reduced (global: the running sum)
    cpu::BalanceGroups groups;    // the rows' balancing groups
    double aux_scale = 0;         // c of L = c sum_n sum_e counts[g(n), e] s[n, e]; 0 = no loss
    double aux_loss = 0, z_loss = 0;
    const int32_t* idx() const { return static_cast<const int32_t*>(topk_idx.ptr); }
  };
  void forward(Saved& s, const float* x, int64_t N, const RouterBatch& batch, Arena& arena);
  // dx[N, D] += ; dW += . dtopk_probs[N, K] is the gradient arriving at the gating probs.
  // loss_scale multiplies the aux and z-loss gradients (CP / micro-batches, §6.6).
  void backward(float* dx, const float* dtopk_probs, const float* x, const Saved& s, int64_t N,
                float loss_scale, Arena& scratch) const;

  // Aux-loss-free balancing (§6.7): counts of the routing actually used, accumulated over the
  // micro-batches of a step; update_expert_bias() applies bias += u * sign(mean - count), resets.
  void accumulate_expert_load(const int64_t* tokens_per_expert);
  void update_expert_bias();
  std::vector<float>& expert_bias() { return expert_bias_; }
  // The step is over: the global-batch loss's running counts start again.
  void end_of_step();

 private:
  // The balancing loss's groups, counts (reduced) and scale for this micro-batch (s.counts filled).
  void balancing_counts(Saved& s, int64_t N, const RouterBatch& batch);

  const ModelConfig& cfg_;
  cpu::RouterOptions opt_;
  const Communicator& tp_cp_;
  const Communicator& tp_dp_cp_;
  Param* weight_;  // [E, D]
  std::vector<float> expert_bias_;     // [E], fp32, affects selection only
  std::vector<int64_t> step_load_;     // [E]
  std::vector<int64_t> global_counts_;  // [E] global_aux_loss: C_e over the step's micro-batches
  int64_t global_micro_batches_ = 0;    // m
};

}  // namespace ff
