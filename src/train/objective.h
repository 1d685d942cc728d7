// Token-level objectives (DESIGN decision 10): a function of the per-row log-probs of the targets
// that the LM head gives (models/decoder_lm.h TargetLogProbs), evaluated on one micro-batch at a
// time, returning its value and its gradient per row. The body and head know nothing of the loss.
//
// The loss of a step is a global token mean: with T the valid targets of the whole step (every
// micro-batch of every data-parallel replica), loss = -(1/T) sum over those targets of logp. Each
// micro-batch contributes its own sum divided by T, so micro-batches with unequal numbers of valid
// targets weigh by their tokens, exactly as one large batch would.
#pragma once
#include <cstdint>
#include <vector>

#include "models/decoder_lm.h"
#include "parallel/comm.h"

namespace ff {

struct ObjectiveValue {
  double loss = 0;     // this micro-batch's contribution to the step's loss
  int64_t tokens = 0;  // rows with a target (over the CP ranks)
};

class TokenObjective {
 public:
  virtual ~TokenObjective() = default;
  // dlogp[B*S] OVERWRITTEN with d loss / d logp (0 on rows without a target). Complete over the CP
  // group: every CP rank of a micro-batch calls it and gets the same value.
  virtual ObjectiveValue evaluate(const TargetLogProbs& in, float* dlogp) const = 0;
};

// loss = -(1 / total_tokens) sum over the valid rows of logp.
class TokenMeanCrossEntropy : public TokenObjective {
 public:
  explicit TokenMeanCrossEntropy(double total_tokens) : total_(total_tokens) {}
  ObjectiveValue evaluate(const TargetLogProbs& in, float* dlogp) const override;

 private:
  double total_;
};

// Rows with a target (>= 0) in targets.
int64_t count_targets(const std::vector<int32_t>& targets);
// The valid targets of one step: over its micro-batches, summed over the data-parallel group
// (collective over dp).
int64_t step_target_count(const std::vector<std::vector<int32_t>>& targets, const Communicator& dp);

// Tests and tools: one micro-batch through a whole single-stage model, with the mean cross-entropy
// over that micro-batch's valid targets as the objective (result.loss). backward_mean_ce adds the
// gradients of scale * (that loss + the MoE losses).
ForwardResult forward_mean_ce(DecoderLM& model, DecoderLM::MicroBatch& mb, const int32_t* tokens,
                              const int32_t* targets, int64_t B, int64_t S);
void backward_mean_ce(DecoderLM& model, DecoderLM::MicroBatch& mb, float scale);

}  // namespace ff
