// Token-level objectives (DESIGN decision 10): a function of the per-row log-probs of the targets
// that the LM head gives (models/decoder_lm.h HeadRows), evaluated on one micro-batch at a
// time, returning its value and its gradient per row. The body and head know nothing of the loss.
//
// The loss of a step is a global token mean: with T the valid targets of the whole step (every
// micro-batch of every data-parallel replica), loss = -(1/T) sum over those targets of logp. Each
// micro-batch contributes its own sum divided by T, so micro-batches with unequal numbers of valid
// targets weigh by their tokens, exactly as one large batch would.
#pragma once
#include <cstdint>
#include <memory>
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
  virtual ObjectiveValue evaluate(const HeadRows& in, float* dlogp) const = 0;
};

// loss = -(1 / total_tokens) sum over the valid rows of logp (the LM head's HeadRows::value).
class TokenMeanCrossEntropy : public TokenObjective {
 public:
  explicit TokenMeanCrossEntropy(double total_tokens) : total_(total_tokens) {}
  ObjectiveValue evaluate(const HeadRows& in, float* dlogp) const override;

 private:
  double total_;
};

// A distribution objective reads the student's logits of one micro-batch (this rank's vocabulary
// shard) and writes their gradient. It gets the micro-batch's tokens as the executor got them (the
// whole [B*S], before any context-parallel split) and the positions, and, when it names a
// companion model (a teacher), that model's logits of the same rows: the pipeline executor runs
// the companion's forward beside the student's, chunk by chunk on the same stages.
struct StudentLogits {
  const float* logits = nullptr;  // [rows, Vl]
  const float* lse = nullptr;     // [rows] log-sum-exp of the logits over the whole vocabulary (rows with a target)
  HeadRows rows;            // which rows have targets (the mask), log p(target), positions, B, S, CP group
  const int32_t* tokens = nullptr;       // [B * S_full]
  const int32_t* positions = nullptr;    // [B * S_full] or null
  int64_t S_full = 0, Vl = 0, v0 = 0;    // v0: the first vocabulary id of this shard
  const Communicator* tp = nullptr;      // the vocabulary shards (null: one)
  const float* companion_logits = nullptr;  // [rows, Vl] the companion's, when the objective has one
  int64_t companion_Vl = 0;
  // The hidden states at the heads (DecoderLM::head_hidden) [rows, width], when the objective uses them.
  const float* hidden = nullptr;
  const float* companion_hidden = nullptr;
  int64_t hidden_width = 0, companion_hidden_width = 0;
};

class LogitObjective {
 public:
  virtual ~LogitObjective() = default;
  // A frozen model to run on the same rows (its logits arrive as StudentLogits::companion_logits);
  // null: none.
  virtual DecoderLM* companion() const { return nullptr; }
  // Whether it reads the hidden states and writes their gradient.
  virtual bool uses_hidden() const { return false; }
  // dlogits[rows, Vl] OVERWRITTEN with d loss / d logits, and dhidden [rows, hidden_width] with
  // d loss / d hidden when uses_hidden() (else null). Complete over the TP and CP groups.
  virtual ObjectiveValue evaluate(const StudentLogits& in, float* dlogits, float* dhidden) const = 0;
};

struct DistillationOptions {
  float temperature = 1.0f;
  bool keep_lm_loss = false;   // + the cross-entropy, KD rescaled to its magnitude
  bool hidden_cosine = false;  // + 1 - cos of the heads' hidden states, rescaled to KD's magnitude
};

// Knowledge distillation (specs/methods.md §3.7, Minitron): the forward KL from a frozen teacher's
// distribution to the student's at temperature tau, KD = tau^2 KL(p_t || p_s), as a global token
// mean over the rows with a target (1 / total_tokens). The teacher runs on the same tokens under
// the same layout (its own layers over the same pipeline stages).
// hidden_cosine adds COS = 1 / T sum (1 - cos(h_s, h_t)) over the same rows, on the final norm's
// outputs (the student's through its learned projection when the widths differ), rescaled to
// KD's magnitude: KD' = KD + c COS with c = KD / COS of the micro-batch, detached.
// keep_lm_loss keeps the student's cross-entropy CE and rescales KD' to its magnitude:
// loss = CE + r KD' with r = CE / KD', detached. Detached ratios are constants for the gradient;
// the value reported is then 2 KD, or 2 CE with the LM loss.
class Distillation : public LogitObjective {
 public:
  Distillation(DecoderLM& teacher, double total_tokens, const DistillationOptions& o = {});
  DecoderLM* companion() const override { return &teacher_; }
  bool uses_hidden() const override { return o_.hidden_cosine; }
  ObjectiveValue evaluate(const StudentLogits& in, float* dlogits, float* dhidden) const override;

 private:
  DecoderLM& teacher_;
  double total_;
  DistillationOptions o_;
};

// Per sequence of one micro-batch, the head's `width` values at its last row with a target (the
// largest position: a reward model's score, an attribute model's predictions), complete over
// the CP group (0 for a sequence without targets); `at`: that row's local index, or -1 where
// another CP rank holds it or the sequence has none. [B, width].
std::vector<double> last_row_values(const HeadRows& in, std::vector<int64_t>& at);

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
