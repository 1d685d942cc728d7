// Objectives under every layout: the loss as a global token mean, distillation (a distribution
// objective with a frozen teacher in the same job) and a value head. Each runs M micro-batches
// per data-parallel replica through the pipeline executor and must give the loss and gradients
// of one process running all DP x M micro-batches as a single batch, with the same objective
// (tolerances as in test_invariance.cpp: the same sums in another order).
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "invariance.h"
#include "invariance_harness.h"
#include "models/decoder_lm.h"
#include "parallel/data_parallel.h"
#include "train/objective.h"
#include "train/pipeline.h"
#include "train/preference_objective.h"

namespace ff {
namespace {

using namespace test;  // invariance.h, tiny_model.h

// The loss is a global token mean: sequences that keep different numbers of valid targets (the
// rest masked), under data, context, tensor and pipeline parallelism, weigh by their tokens.
void expect_token_mean_invariant(const ParallelConfig& pc) {
  const ModelConfig cfg = tiny_dense();
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 13), ref(cfg, one, 13);
  const int64_t S = cfg.seq_len;
  auto masked = [&](int64_t k) {  // micro-batch k of the step; sequence b keeps (3 k + b) % S + 1 targets
    Batch b = micro_batch(0, k, 2, cfg);
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t i = (3 * k + s) % S + 1; i < S; ++i) b.targets[static_cast<size_t>(s * S + i)] = -1;
    return b;
  };
  expect_one_batch_invariant(model, ref, grid, one, masked,
                             [&](PipelineExecutor& pipe, const auto& tokens, const auto& targets, int64_t B,
                                 double total, bool) {
                               return pipe.run(tokens, targets, B, S, TokenMeanCrossEntropy(total));
                             });
}

TEST(Invariance, GlobalTokenMeanWithUnequalMasks) {
  expect_token_mean_invariant(ParallelConfig{});  // data parallel over all ranks
  ParallelConfig pc;
  pc.cp = 2;
  expect_token_mean_invariant(pc);
  pc = tensor_layout(2, true);
  expect_token_mean_invariant(pc);
  pc = ParallelConfig{};
  pc.pp = 2;
  expect_token_mean_invariant(pc);
}

// A micro-batch of the step with one masked row.
Batch with_a_masked_row(const ModelConfig& cfg, int64_t step, int64_t k) {
  Batch b = micro_batch(step, k, 2, cfg);
  b.targets[static_cast<size_t>((3 * k) % (2 * cfg.seq_len))] = -1;
  return b;
}

// Distillation under DP, TP with and without SP (vocabulary-parallel KL), CP, EP and PP (the
// teacher's layers over the same stages, plain and interleaved); the teacher may differ from the
// student in width and depth. keep_lm: the LM loss kept, KD rescaled per micro-batch.
// With the hidden cosine the student gets the learned projection to the teacher's width where
// the widths differ.
void expect_distillation_invariant(const ModelConfig& cfg, const ParallelConfig& pc, const ModelConfig& teacher_cfg,
                                   bool keep_lm = false, bool hidden_cosine = false) {
  SCOPED_TRACE(strprintf("pp %lld x %lld, tp %lld, cp %lld, ep %lld, keep_lm %d, hidden_cosine %d", (long long)pc.pp,
                         (long long)pc.virtual_stages, (long long)pc.tp, (long long)pc.cp, (long long)pc.ep, keep_lm,
                         hidden_cosine));
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  TrainingExtras extras;
  if (hidden_cosine && teacher_cfg.d_model != cfg.d_model) extras.hidden_projection = teacher_cfg.d_model;
  DecoderLM student(cfg, grid, 13, {}, extras), teacher(teacher_cfg, grid, 29, {"*"}), ref(cfg, one, 13, {}, extras),
      ref_teacher(teacher_cfg, one, 29, {"*"});
  const DistillationOptions o{1.5f, keep_lm, hidden_cosine};
  expect_one_batch_invariant(
      student, ref, grid, one, [&](int64_t k) { return with_a_masked_row(cfg, 1, k); },
      [&](PipelineExecutor& pipe, const auto& tokens, const auto& targets, int64_t B, double total, bool reference) {
        return pipe.run(tokens, targets, B, cfg.seq_len, Distillation(reference ? ref_teacher : teacher, total, o));
      },
      keep_lm || hidden_cosine);  // per micro-batch ratios
}

// A deeper and wider teacher for the student tiny_dense(): 8 layers of width 24.
ModelConfig wider_deeper_teacher() {
  ModelConfig t = tiny_dense();
  t.d_model = 24;
  t.layer_pattern = "*-*-*-*-";
  t.num_layers = 4;
  return t;
}

TEST(Invariance, Distillation) {
  ModelConfig c = tiny_moe();
  c.moe_aux_loss_coeff = 0;  // defined per micro-batch: the one-batch reference differs by design
  c.moe_z_loss_coeff = 0;
  expect_distillation_invariant(c, layout(max_ep()), c);
  expect_distillation_invariant(tiny_dense(), tensor_layout(2, false), tiny_dense());
  expect_distillation_invariant(c, tensor_layout(2, true, 2), c);
  ParallelConfig cp;
  cp.cp = 2;
  expect_distillation_invariant(tiny_dense(), cp, tiny_dense());
}

TEST(Invariance, DistillationUnderPipelineStages) {
  ParallelConfig pp;
  pp.pp = 2;  // the rest data-parallel
  expect_distillation_invariant(tiny_dense(), pp, wider_deeper_teacher());
  pp.virtual_stages = 2;  // interleaved: student chunks of one layer, teacher chunks of two
  expect_distillation_invariant(tiny_dense(), pp, wider_deeper_teacher());
}

TEST(Invariance, DistillationWithTheHiddenCosine) {
  // Through the learned projection (a wider teacher) and directly (the same width).
  expect_distillation_invariant(tiny_dense(), ParallelConfig{}, wider_deeper_teacher(), false, true);
  expect_distillation_invariant(tiny_dense(), tensor_layout(2, true), wider_deeper_teacher(), true, true);
  ParallelConfig pp;
  pp.pp = 2;
  expect_distillation_invariant(tiny_dense(), pp, wider_deeper_teacher(), false, true);
  ParallelConfig cp;
  cp.cp = 2;
  expect_distillation_invariant(tiny_dense(), cp, tiny_dense(), false, true);
}

TEST(Invariance, DistillationKeepingTheLmLoss) {
  expect_distillation_invariant(tiny_dense(), ParallelConfig{}, wider_deeper_teacher(), true);
  expect_distillation_invariant(tiny_dense(), tensor_layout(2, true), wider_deeper_teacher(), true);
  ParallelConfig pp;
  pp.pp = 2;
  expect_distillation_invariant(tiny_dense(), pp, wider_deeper_teacher(), true);
}

// A regression on the value head's outputs: 1/2 mean over rows with a target of (v - t / 10)^2,
// as a global token mean.
class ValueRegression : public TokenObjective {
 public:
  explicit ValueRegression(double total) : total_(total) {}
  ObjectiveValue evaluate(const HeadRows& in, float* dv) const override {
    double sum_count[2] = {0, 0};
    for (int64_t n = 0; n < in.B * in.S; ++n) {
      dv[n] = 0.0f;
      if (in.targets[n] < 0) continue;
      const double e = in.value[n] - in.targets[n] / 10.0;
      sum_count[0] += 0.5 * e * e;
      sum_count[1] += 1;
      dv[n] = static_cast<float>(e / total_);
    }
    if (in.cp) in.cp->all_reduce_sum(sum_count, 2);
    return {sum_count[0] / total_, static_cast<int64_t>(sum_count[1])};
  }

 private:
  double total_;
};

// A value head (model.head = value) under DP, TP with and without SP, EP, CP and PP.
void expect_value_head_invariant(ModelConfig cfg, const ParallelConfig& pc) {
  cfg.head = HeadKind::value;
  cfg.moe_aux_loss_coeff = 0;
  cfg.moe_z_loss_coeff = 0;
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 17), ref(cfg, one, 17);
  expect_one_batch_invariant(model, ref, grid, one, [&](int64_t k) { return with_a_masked_row(cfg, 2, k); },
                             [&](PipelineExecutor& pipe, const auto& tokens, const auto& targets, int64_t B,
                                 double total, bool) {
                               return pipe.run(tokens, targets, B, cfg.seq_len, ValueRegression(total));
                             });
}

TEST(Invariance, ValueHead) {
  expect_value_head_invariant(tiny_moe(), layout(max_ep()));
  expect_value_head_invariant(tiny_dense(), tensor_layout(2, false));
  expect_value_head_invariant(tiny_moe(), tensor_layout(2, true, 2));
  ParallelConfig cp;
  cp.cp = 2;
  expect_value_head_invariant(tiny_dense(), cp);
  ParallelConfig pp;
  pp.pp = 2;
  expect_value_head_invariant(tiny_dense(), pp);
}

// Pairwise objectives (train/preference_objective.h): each micro-batch of two sequences is one
// pair. The DPO family compares with a frozen reference (another seed) whose per-sequence
// log-probs are computed first, micro-batch by micro-batch, through the same layout; the reward
// model reads each sequence's last value. Under DP, TP with SP, CP (a sequence's sums and its last
// row span the CP ranks) and PP.
void expect_pairwise_invariant(ModelConfig cfg, const ParallelConfig& pc, Objective kind) {
  const bool reward_model = kind == Objective::bradley_terry;
  if (reward_model) cfg.head = HeadKind::value;
  cfg.moe_aux_loss_coeff = 0;
  cfg.moe_z_loss_coeff = 0;
  PairwiseOptions o;
  o.kind = kind;
  o.beta = 0.5;
  o.eta = 0.3;
  o.sft_weight = 0.2;
  Communicator world = Communicator::world(), self = Communicator::self();
  ParallelGrid grid(world, pc), one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 17), ref(cfg, one, 17);
  DecoderLM frozen(cfg, grid, 31, {"*"}), ref_frozen(cfg, one, 31, {"*"});  // the DPO reference
  PipelineExecutor frozen_pipe(frozen, grid, 1), ref_frozen_pipe(ref_frozen, one, 1);
  const int64_t S = cfg.seq_len;
  expect_one_batch_invariant(model, ref, grid, one, [&](int64_t k) { return with_a_masked_row(cfg, 3, k); },
                             [&](PipelineExecutor& pipe, const auto& tokens, const auto& targets, int64_t B,
                                 double, bool reference) {
                               const double pairs = reference ? static_cast<double>(count_pairs(targets[0], S))
                                                              : static_cast<double>(step_pair_count(targets, S, grid.dp()));
                               // Ground-truth rewards by the step's global pair k (one per micro-batch):
                               // the one-batch reference holds all pairs side by side.
                               auto reward = [](int64_t k, int64_t b) { return static_cast<float>((7 * b + k) % 5); };
                               const int64_t M = static_cast<int64_t>(tokens.size());
                               std::vector<std::vector<double>> logps(tokens.size());
                               std::vector<std::vector<float>> rewards(tokens.size());
                               for (int64_t m = 0; m < M; ++m) {
                                 for (int64_t b = 0; b < B; ++b)
                                   rewards[m].push_back(reference ? reward(b / 2, b % 2)
                                                                  : reward(grid.dp().rank() * M + m, b));
                                 if (!reward_model)
                                   (reference ? ref_frozen_pipe : frozen_pipe)
                                       .evaluate(tokens[m], targets[m], B, S, ReferenceLogps(logps[m], false));
                               }
                               return pipe.run(tokens, targets, B, S, PairwiseObjective(o, pairs, &logps, &rewards));
                             });
}

TEST(Invariance, PairwiseObjectives) {
  ParallelConfig cp, pp;
  cp.cp = 2;
  pp.pp = 2;
  for (Objective kind : {Objective::dpo, Objective::bradley_terry, Objective::rpo_bwd_kl}) {
    SCOPED_TRACE(enum_to_string(kind));
    expect_pairwise_invariant(tiny_dense(), ParallelConfig{}, kind);  // data parallel over all ranks
    expect_pairwise_invariant(tiny_dense(), tensor_layout(2, true), kind);
    expect_pairwise_invariant(tiny_dense(), cp, kind);
    expect_pairwise_invariant(tiny_dense(), pp, kind);
  }
}

}  // namespace
}  // namespace ff
