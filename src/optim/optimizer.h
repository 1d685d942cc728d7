// AdamW over a ParamStore (fp32 master weights = the parameters themselves on CPU fp32), with
// weight decay off for parameters marked so (norms), global-norm gradient clipping, and the
// learning-rate schedule: linear warmup, then cosine or linear decay to min_lr.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/fields.h"
#include "core/param.h"
#include "parallel/comm.h"

namespace ff {

enum class LrDecay : uint8_t { cosine, linear, constant };
std::span<const EnumName<LrDecay>> enum_names(LrDecay);

struct OptimizerConfig {
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup_steps = 50;
  LrDecay lr_decay = LrDecay::cosine;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;
  bool distributed = false;

  template <class V>
  void visit_fields(V& v) {
    v(lr, "lr", "peak learning rate");
    v(min_lr, "min_lr", "learning rate at the end of the decay");
    v(warmup_steps, "warmup_steps", "linear warmup steps");
    v(lr_decay, "lr_decay", "decay after warmup");
    v(weight_decay, "weight_decay", "decoupled weight decay (not applied to norms)");
    v(beta1, "beta1", "Adam beta1");
    v(beta2, "beta2", "Adam beta2");
    v(adam_eps, "adam_eps", "Adam epsilon");
    v(grad_clip, "grad_clip", "clip the global gradient norm to this; 0 = off");
    v(distributed, "distributed", "distributed optimizer (ZeRO-1): Adam moments sharded over the data-parallel ranks");
  }
  std::vector<std::string> validate() const;
};

// Learning rate at optimizer step `step` (0-based) of `total` steps.
double learning_rate(const OptimizerConfig& c, int64_t step, int64_t total);

class AdamW {
 public:
  // allocate_moments = false: a placeholder that never steps (the distributed optimizer's run).
  AdamW(ParamStore& params, const OptimizerConfig& cfg, bool allocate_moments = true);
  // Global L2 norm of the gradients of the whole model. Squared norms of dense parameters are
  // summed over dense_group (the ranks holding disjoint parts of the dense model: TP x PP), those
  // of expert parameters over expert_group (ETP x EP x PP); replicas are counted once.
  double grad_norm(const Communicator& dense_group, const Communicator& expert_group) const;
  // One update with learning rate lr; clips first (scale = clip / norm when norm > clip).
  // Returns the pre-clip gradient norm.
  double step(double lr, const Communicator& dense_group, const Communicator& expert_group);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }  // resume from a checkpoint

  std::vector<float>& exp_avg() { return m_; }
  std::vector<float>& exp_avg_sq() { return v_; }

 private:
  ParamStore& params_;
  OptimizerConfig cfg_;
  std::vector<float> m_, v_;  // same layout as the store's flat buffers
  int64_t t_ = 0;
};

}  // namespace ff
