// MoE router layer (specs/parallelism-and-moe.md §6): fp32 logits = x W^T, gating by the chosen
// score function and top-k, load-balancing aux loss and z-loss whose gradients are injected here
// (never added to the LM loss), and the optional aux-loss-free expert bias.
// Legend: N local tokens, D width, E experts, K top-k.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/cpu/router.h"
#include "layers/model_config.h"
#include "parallel/grid.h"

namespace ff {

class Router {
 public:
  // Aux-loss token counts are summed over grid.tp_cp() (the ranks that hold one micro-batch);
  // expert-bias loads over grid.tp_dp_cp() (every rank's tokens, §6.7).
  Router(ParamStore& store, const std::string& prefix, const ModelConfig& cfg, const ParallelGrid& grid);

  struct Saved {
    Tensor logits;      // [N, E]
    Tensor scores;      // [N, E] gating scores saved for backward
    Tensor topk_idx;    // [N, K] int32 stored in 4-byte slots
    Tensor topk_probs;  // [N, K]
    Tensor aux_scores;  // [N, E] (aux loss on)
    Tensor z_lse;       // [N] (z-loss on)
    std::vector<int64_t> counts;  // [E] aux-loss counts, reduced over tp_cp
    double aux_loss = 0, z_loss = 0;
    const int32_t* idx() const { return static_cast<const int32_t*>(topk_idx.ptr); }
  };
  void forward(Saved& s, const float* x, int64_t N, Arena& arena) const;
  // dx[N, D] += ; dW += . dtopk_probs[N, K] is the gradient arriving at the gating probs.
  // loss_scale multiplies the aux and z-loss gradients (1 / micro-batches, §6.6).
  void backward(float* dx, const float* dtopk_probs, const float* x, const Saved& s, int64_t N,
                float loss_scale, Arena& scratch) const;

  // Aux-loss-free balancing (§6.7): counts of the routing actually used, accumulated over the
  // micro-batches of a step; update_expert_bias() applies bias += u * sign(mean - count), resets.
  void accumulate_expert_load(const int64_t* tokens_per_expert);
  void update_expert_bias();
  std::vector<float>& expert_bias() { return expert_bias_; }

 private:
  const ModelConfig& cfg_;
  cpu::RouterOptions opt_;
  const Communicator& tp_cp_;
  const Communicator& tp_dp_cp_;
  Param* weight_;  // [E, D]
  std::vector<float> expert_bias_;     // [E], fp32, affects selection only
  std::vector<int64_t> step_load_;     // [E]
};

}  // namespace ff
