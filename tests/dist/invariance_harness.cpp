// The invariance harness (invariance_harness.h): each rank builds both the parallel model and the
// single-process reference (on MPI_COMM_SELF) and compares what it holds, by global name.
//
// Tolerance: per tensor, max |g - g_ref| <= 1e-4 * max |g_ref| (+1e-7), losses to 1e-5 relative.
// The parallel run sums the DP replicas' fp32 gradients in an all-reduce and groups rows from
// several ranks into one expert GEMM, where the reference accumulates micro-batch by micro-batch:
// the same sums in another order, a few ulps apart after three steps, far below 1e-4.
// bf16 compute: the GEMM operands are the same bf16 values on every layout, but an activation
// whose fp32 value differs by an ulp can round to the neighbouring bf16 (2^-8 relative) before
// the next GEMM (and context parallelism rounds each chunk's probabilities against its own
// running max), so bf16 layouts are held to 300x those tolerances (3e-2 per tensor, 3e-3 losses),
// over one step: Adam's first update is lr * sign(g) for every element, so a gradient element
// within rounding noise of zero may move its value by 2 lr on one layout and not the other, and
// the runs part from there.
// Values after an Adam step: Adam divides each moment by the square root of the second moment, so
// an element whose gradient is near zero moves by up to lr per step whatever its sign and size
// (lr * sign(g) on the first step): gradients equal to the tolerance above can still move such an
// element's value by much more than that tolerance. Each element is therefore allowed the fp32
// tolerance plus what Adam can make of gradients that differ by at most delta (the gradient
// tolerance of its tensor) in that step (AdamAllowance below). After each step's checks the
// parallel model takes the reference's weights, so every step's gradients are compared at one
// point: gradients at two points Adam has moved apart are not comparable to 1e-4.
#include "invariance_harness.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "invariance.h"
#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "parallel/data_parallel.h"
#include "train/objective.h"
#include "train/pipeline.h"

namespace ff::test {
namespace {

// The per-element bound on how far Adam can move two runs apart when their gradients differ by at
// most delta per element (the gradient tolerance), accumulated over the steps.
// With bias-corrected moments m^ = sum_i a_i g_i and v^ = sum_i b_i g_i^2 (weights a_i, b_i summing
// to 1), the update is u = lr m^ / (sqrt(v^) + eps). Gradients off by delta change m^ by at most
// delta and sqrt(v^) by at most delta (the triangle inequality in the b-weighted norm), so
// |du| <= lr (1 + R) delta / (sqrt(v^) + eps), where R bounds |m^| / sqrt(v^): by Cauchy-Schwarz
// R <= sqrt(sum_i a_i^2 / b_i) (1 on the first step). Nor can the two updates differ by more than
// lr 2R. A factor 2 covers the second-order terms. The moments mix all steps' gradients, so delta
// is the largest of the steps so far. Values already apart stay so (decoupled weight decay only
// shrinks a difference), and the gradients they change are held to delta by the gradient check,
// so the bounds of the steps add up.
struct AdamAllowance {
  std::map<std::string, std::vector<double>> per_tensor;  // by name, [numel of the whole tensor]
  std::map<std::string, double> delta;                    // by name, the largest gradient tolerance so far

  // The runs' weights were made equal again: only the moments (held to delta) still differ.
  void restart() {
    for (auto& [name, a] : per_tensor) std::fill(a.begin(), a.end(), 0.0);
  }

  void add_step(ParamStore& ref, AdamW& opt, const OptimizerConfig& oc, double tol, double grad_norm) {
    const int64_t t = opt.steps_taken();
    double sum_a2_over_b = 0;  // sum_i a_i^2 / b_i over the t steps
    for (int64_t i = 1; i <= t; ++i) {
      const double a = (1 - oc.beta1) * std::pow(oc.beta1, double(t - i)) / (1 - std::pow(oc.beta1, double(t)));
      const double b = (1 - oc.beta2) * std::pow(oc.beta2, double(t - i)) / (1 - std::pow(oc.beta2, double(t)));
      sum_a2_over_b += a * a / b;
    }
    const double R = std::sqrt(sum_a2_over_b);
    const double clip = oc.grad_clip > 0 && grad_norm > oc.grad_clip ? oc.grad_clip / grad_norm : 1.0;
    const double v_correction = 1 - std::pow(oc.beta2, double(t));
    for (Param& q : ref.params()) {
      if (!q.trainable) continue;  // never moves: no allowance
      double scale = 0;
      for (int64_t i = 0; i < q.numel(); ++i) scale = std::max(scale, std::fabs(double(q.grad[i])));
      double& delta = this->delta[q.name];
      delta = std::max(delta, clip * (tol * scale + 1e-7));  // the gradients Adam saw were clipped
      auto& a = per_tensor[q.name];
      a.resize(static_cast<size_t>(q.numel()), 0.0);
      for (int64_t i = 0; i < q.numel(); ++i) {
        const double sqrt_v = std::sqrt(opt.exp_avg_sq()[static_cast<size_t>(q.offset + i)] / v_correction);
        const double du = std::min(2 * R, 2 * (1 + R) * delta / (sqrt_v + oc.adam_eps));
        a[static_cast<size_t>(i)] += oc.lr * du;
      }
    }
  }
};

}  // namespace

double tolerance_scale(const ModelConfig& cfg) { return cfg.precision == Precision::bf16 ? 300.0 : 1.0; }

ForwardResult expect_invariant(const ModelConfig& cfg, const ParallelConfig& pc, const ModelSetup& setup,
                               bool distributed, const std::vector<std::string>& frozen, int64_t steps, int64_t B) {
  SCOPED_TRACE(strprintf("pattern %s, tp %lld (sp %d) cp %lld ep %lld etp %lld, distributed %d", cfg.pattern().c_str(),
                         (long long)pc.tp, int(pc.sequence_parallel), (long long)pc.cp, (long long)pc.ep,
                         (long long)pc.expert_tp(), int(distributed)));
  Communicator world = Communicator::world();
  auto problems = pc.validate(world.size());
  EXPECT_TRUE(problems.empty()) << problems[0];
  ParallelGrid grid(world, pc);
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 11, frozen), ref(cfg, one, 11, frozen);
  const double tol = tolerance_scale(cfg);
  if (setup) {
    setup(model);
    setup(ref);
  }
  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.warmup_steps = 0;
  AdamW opt(model.params(), oc), ref_opt(ref.params(), oc);
  DistributedAdamW dist_opt(model.params(), oc, grid);
  const int64_t DP = grid.dp_size(), my_replica = grid.dp().rank();
  auto mb = model.new_micro_batch(), ref_mb = ref.new_micro_batch();
  ForwardResult last;
  AdamAllowance allowance;
  if (steps == 0) steps = cfg.precision == Precision::bf16 ? 1 : 3;  // see the header
  for (int64_t step = 0; step < steps; ++step) {
    // Reference: one process accumulates the DP replicas' micro-batches.
    ref.params().zero_grads();
    std::vector<ForwardResult> ref_results;
    for (int64_t d = 0; d < DP; ++d) {
      Batch b = micro_batch(step, d, B, cfg);
      ref_results.push_back(forward_mean_ce(ref, *ref_mb, b.tokens.data(), b.targets.data(), B, cfg.seq_len));
      backward_mean_ce(ref, *ref_mb, 1.0f / static_cast<float>(DP));
    }
    // Parallel: this rank's replica.
    model.params().zero_grads();
    Batch b = micro_batch(step, my_replica, B, cfg);
    ForwardResult r = forward_mean_ce(model, *mb, b.tokens.data(), b.targets.data(), B, cfg.seq_len);
    backward_mean_ce(model, *mb, 1.0f);
    if (!distributed) reduce_gradients(model.params(), grid);

    const ForwardResult& want = ref_results[static_cast<size_t>(my_replica)];
    EXPECT_NEAR(r.loss, want.loss, tol * 1e-5 * std::fabs(want.loss)) << "step " << step;
    EXPECT_NEAR(r.aux_loss, want.aux_loss, tol * 1e-5 * std::fabs(want.aux_loss) + 1e-9) << "step " << step;
    EXPECT_NEAR(r.z_loss, want.z_loss, tol * 1e-5 * std::fabs(want.z_loss) + 1e-9) << "step " << step;
    int64_t dropped = r.dropped_slots;  // this rank's share of the micro-batch's tokens
    grid.tp().all_reduce_sum(&dropped, 1);
    EXPECT_EQ(dropped, want.dropped_slots) << "step " << step;
    for (const Param& p : model.params().params()) {
      Param* q = ref.params().find(p.name);
      EXPECT_NE(q, nullptr) << p.name;
      if (q) {
        EXPECT_EQ(p.trainable, q->trainable) << p.name;
      }
      if (q && !distributed && p.trainable) {
        EXPECT_TRUE(tensors_match(p, *q, false, tol * 1e-4)) << "step " << step;
      }
    }
    const double norm = distributed ? dist_opt.step(oc.lr) : opt.step(oc.lr, grid.mp(), grid.expert_mp());
    const double ref_norm = ref_opt.step(oc.lr, self, self);
    EXPECT_NEAR(norm, ref_norm, tol * 1e-5 * ref_norm) << "step " << step;
    allowance.add_step(ref.params(), ref_opt, oc, tol * 1e-4, ref_norm);
    for (Param& p : model.params().params()) {
      Param* q = ref.params().find(p.name);
      if (q && cfg.precision == Precision::fp32) {
        allowance.per_tensor[p.name].resize(static_cast<size_t>(q->numel()), 0.0);  // frozen: none
        EXPECT_TRUE(tensors_match(p, *q, true, tol * 1e-4, &allowance.per_tensor[p.name]))
            << "values after step " << step;
      }
      // The next step starts from the reference's weights, so that its gradients are compared at
      // one point: where Adam's allowance let the runs' weights part, gradients taken at the two
      // points are not comparable to the tolerance.
      if (q) copy_reference_values(p, *q);
    }
    allowance.restart();
    model.end_of_step();
    ref.end_of_step();
    model.mark_values_changed();
    ref.mark_values_changed();
    last = r;
  }
  return last;
}

// Pipeline parallelism: the same as expect_invariant with M micro-batches per DP replica, run by
// the pipeline executor over the stages; the reference accumulates all DP x M micro-batches.
void expect_pipeline_invariant(const ModelConfig& cfg, const ParallelConfig& pc, int64_t M) {
  Communicator world = Communicator::world();
  auto problems = pc.validate(world.size());
  EXPECT_TRUE(problems.empty()) << problems[0];
  ParallelGrid grid(world, pc);
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  DecoderLM model(cfg, grid, 11), ref(cfg, one, 11);
  const double tol = tolerance_scale(cfg);
  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.warmup_steps = 0;
  AdamW opt(model.params(), oc), ref_opt(ref.params(), oc);
  PipelineExecutor pipe(model, grid, M);
  const int64_t B = 2, DP = grid.dp_size(), replica = grid.dp().rank();
  auto ref_mb = ref.new_micro_batch();
  for (int64_t step = 0; step < 3; ++step) {
    ref.params().zero_grads();
    double ref_loss = 0, ref_aux = 0;  // the step's loss (every micro-batch has B S targets); the replica's aux
    for (int64_t d = 0; d < DP; ++d)
      for (int64_t m = 0; m < M; ++m) {
        Batch b = micro_batch(step, d * M + m, B, cfg);
        ForwardResult r = forward_mean_ce(ref, *ref_mb, b.tokens.data(), b.targets.data(), B, cfg.seq_len);
        ref_loss += r.loss / static_cast<double>(DP * M);
        if (d == replica) ref_aux += r.aux_loss / static_cast<double>(M);
        backward_mean_ce(ref, *ref_mb, 1.0f / static_cast<float>(DP * M));
      }
    model.params().zero_grads();
    std::vector<std::vector<int32_t>> tokens, targets;
    for (int64_t m = 0; m < M; ++m) {
      Batch b = micro_batch(step, replica * M + m, B, cfg);
      tokens.push_back(b.tokens);
      targets.push_back(b.targets);
    }
    const TokenMeanCrossEntropy objective(static_cast<double>(step_target_count(targets, grid.dp())));
    PipelineResult r = pipe.run(tokens, targets, B, cfg.seq_len, objective);
    model.synchronize_tied_embeddings();
    reduce_gradients(model.params(), grid);
    double loss = r.loss;  // the replicas' contributions add up to the step's loss
    grid.dp().all_reduce_sum(&loss, 1);
    EXPECT_NEAR(loss, ref_loss, 1e-5 * ref_loss) << "step " << step;
    EXPECT_NEAR(r.aux_loss, ref_aux, 1e-5 * ref_aux + 1e-9) << "step " << step;
    for (const Param& p : model.params().params()) {
      Param* q = ref.params().find(p.name);
      EXPECT_NE(q, nullptr) << p.name;
      if (q) {
        EXPECT_TRUE(tensors_match(p, *q, false, tol * 1e-4)) << "step " << step;
      }
    }
    const double norm = opt.step(oc.lr, grid.mp(), grid.expert_mp());
    const double ref_norm = ref_opt.step(oc.lr, self, self);
    EXPECT_NEAR(norm, ref_norm, tol * 1e-5 * ref_norm) << "step " << step;
    model.end_of_step();
    ref.end_of_step();
    model.mark_values_changed();
    ref.mark_values_changed();
  }
}

void expect_one_batch_invariant(DecoderLM& model, DecoderLM& ref, const ParallelGrid& grid, const ParallelGrid& one,
                                const std::function<Batch(int64_t)>& batch, const RunObjective& run,
                                bool per_micro_batch) {
  const int64_t B = 2, M = 2, DP = grid.dp_size(), replica = grid.dp().rank();
  Batch all;
  std::vector<std::vector<int32_t>> tokens, targets, each_tokens, each_targets;
  for (int64_t k = 0; k < DP * M; ++k) {
    Batch b = batch(k);
    all.tokens.insert(all.tokens.end(), b.tokens.begin(), b.tokens.end());
    all.targets.insert(all.targets.end(), b.targets.begin(), b.targets.end());
    each_tokens.push_back(b.tokens);
    each_targets.push_back(b.targets);
    if (k / M == replica) {
      tokens.push_back(b.tokens);
      targets.push_back(b.targets);
    }
  }
  const double total = static_cast<double>(step_target_count(targets, grid.dp()));
  EXPECT_EQ(total, static_cast<double>(count_targets(all.targets)));
  PipelineExecutor ref_pipe(ref, one, per_micro_batch ? DP * M : 1);
  ref.params().zero_grads();
  const double want = per_micro_batch ? run(ref_pipe, each_tokens, each_targets, B, total, true).loss
                                      : run(ref_pipe, {all.tokens}, {all.targets}, DP * M * B, total, true).loss;
  PipelineExecutor pipe(model, grid, M);
  model.params().zero_grads();
  const PipelineResult r = run(pipe, tokens, targets, B, total, false);
  model.synchronize_tied_embeddings();
  reduce_gradients(model.params(), grid);
  double loss = r.loss;  // the replicas' contributions add up to the step's loss
  grid.dp().all_reduce_sum(&loss, 1);
  EXPECT_NEAR(loss, want, 1e-5 * std::fabs(want) + 1e-12);  // a loss may be negative (PPO's surrogate)
  for (const Param& p : model.params().params()) {
    Param* q = ref.params().find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    EXPECT_TRUE(tensors_match(p, *q, false, 1e-4));
  }
}


}  // namespace ff::test
