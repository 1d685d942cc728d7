// The contract of the parallel layouts (DESIGN decision 5): for a tiny MoE model, fixed seed and
// data, the losses and gradients of several steps under a layout equal those of one process that
// runs the same micro-batches with gradient accumulation. Each rank builds both the parallel model
// and the single-process reference (on MPI_COMM_SELF) and compares what it holds, by global name.
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
// tolerance of its tensor), summed over the steps taken (AdamAllowance below).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "models/decoder_lm.h"
#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "parallel/data_parallel.h"
#include "invariance.h"
#include "tiny_model.h"
#include "train/objective.h"
#include "train/pipeline.h"

namespace ff {
namespace {

using namespace test;  // invariance.h, tiny_model.h

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

// How many times the fp32 tolerances a run of this precision is held to (see the header).
double tolerance_scale(const ModelConfig& cfg) { return cfg.precision == Precision::bf16 ? 300.0 : 1.0; }

using ModelSetup = std::function<void(DecoderLM&)>;

// Returns this rank's last forward result (for layout-specific assertions).
// distributed: the parallel model uses the distributed optimizer (ZeRO-1); its reduced gradients
// never exist whole, so the parameters after each step are compared instead.
// frozen: globs of parameters frozen in both models.
// steps: optimizer steps compared; 0 = 3 under fp32 and 1 under bf16 (see the header).
ForwardResult expect_invariant(const ModelConfig& cfg, const ParallelConfig& pc, const ModelSetup& setup = {},
                               bool distributed = false, const std::vector<std::string>& frozen = {},
                               int64_t steps = 0) {
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
  const int64_t B = 2, DP = grid.dp_size(), my_replica = grid.dp().rank();
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
    for (const Param& p : model.params().params()) {
      Param* q = ref.params().find(p.name);
      if (q && cfg.precision == Precision::fp32) {
        allowance.per_tensor[p.name].resize(static_cast<size_t>(q->numel()), 0.0);  // frozen: none
        EXPECT_TRUE(tensors_match(p, *q, true, tol * 1e-4, &allowance.per_tensor[p.name]))
            << "values after step " << step;
      }
    }
    model.end_of_step();
    ref.end_of_step();
    model.mark_values_changed();
    ref.mark_values_changed();
    last = r;
  }
  return last;
}

TEST(Invariance, DataParallel) { expect_invariant(tiny_moe(), layout(1)); }

TEST(Invariance, ExpertParallelAllToAllOverAllRanks) { expect_invariant(tiny_moe(), layout(max_ep())); }

TEST(Invariance, ExpertParallelAllGatherOverAllRanks) {
  expect_invariant(tiny_moe(), layout(max_ep(), MoeDispatcher::allgather));
}

TEST(Invariance, ExpertParallelTwoWithExpertDataParallel) {
  if (world_size() < 4) GTEST_SKIP() << "needs 4 ranks (EP 2 x EDP 2)";
  expect_invariant(tiny_moe(), layout(2));
}

TEST(Invariance, DataAndExpertParallelWithCapacityFactor) {
  ModelConfig c = tiny_moe();
  c.moe_capacity_factor = 1.0;
  c.moe_drop_policy = cpu::DropPolicy::probs;
  expect_invariant(c, layout(2));
  expect_invariant(c, layout(2, MoeDispatcher::allgather));
}

TEST(Invariance, PadToCapacityPositionPolicy) {
  ModelConfig c = tiny_moe();
  c.moe_capacity_factor = 0.75;
  c.moe_drop_policy = cpu::DropPolicy::position;
  c.moe_pad_to_capacity = true;
  expect_invariant(c, layout(max_ep()));
}

TEST(Invariance, SharedExpertAndEightExperts) {
  ModelConfig c = tiny_moe();
  c.num_experts = 8;
  c.moe_top_k = 3;
  c.moe_shared_expert_hidden = 10;
  c.moe_shared_expert_gate = true;
  expect_invariant(c, layout(max_ep()));
}

// Dropless with a router skewed so that experts 2 and 3 (all of EP rank 1's experts when EP = 2)
// receive no tokens at all: zero-row experts and zero-row ranks are a normal path.
TEST(Invariance, SkewedRouterLeavesExpertsAndRanksWithoutTokens) {
  ModelConfig c = tiny_moe();
  c.moe_router_score = cpu::RouterScore::sigmoid;
  c.moe_router_norm_topk_prob = true;
  c.moe_expert_bias = true;
  c.moe_expert_bias_update_rate = 1e-4;
  ModelSetup skew = [](DecoderLM& m) {
    for (MoeLayer* layer : m.moe_layers()) layer->router().expert_bias() = {10.0f, 10.0f, -10.0f, -10.0f};
  };
  ForwardResult r = expect_invariant(c, layout(2), skew);
  expect_invariant(c, layout(2, MoeDispatcher::allgather), skew);
  ASSERT_EQ(r.expert_load.size(), 8u);  // 2 MoE layers x 4 experts, this rank's tokens
  for (int layer = 0; layer < 2; ++layer) {
    EXPECT_GT(r.expert_load[layer * 4 + 0], 0);
    EXPECT_EQ(r.expert_load[layer * 4 + 2], 0);
    EXPECT_EQ(r.expert_load[layer * 4 + 3], 0);
  }
}

TEST(Invariance, TensorParallelWithoutSequenceParallel) {
  expect_invariant(tiny_dense(), tensor_layout(2, false));
  ModelConfig c = tiny_dense();
  c.tie_embeddings = true;
  c.norm = NormKind::layernorm1p;
  c.activation = Activation::squared_relu;
  expect_invariant(c, tensor_layout(2, false));
}

TEST(Invariance, TensorParallelWithSequenceParallel) {
  expect_invariant(tiny_dense(), tensor_layout(2, true));
  ModelConfig chunked = tiny_dense();  // the vocabulary-parallel head and loss over row chunks
  chunked.head_chunk_rows = 5;
  expect_invariant(chunked, tensor_layout(2, true));
  ModelConfig c = tiny_moe();
  c.moe_shared_expert_hidden = 10;
  c.moe_shared_expert_gate = true;
  expect_invariant(c, tensor_layout(2, true));  // MoE: experts replicated over TP (EDP = TP)
}

// MoE Parallel Folding: EP spans the attention TP ranks (and the DP ranks with 4 ranks).
TEST(Invariance, TensorAndExpertParallelFolded) {
  expect_invariant(tiny_moe(), tensor_layout(2, true, 2));
  ParallelConfig ag = tensor_layout(2, true, 2);
  ag.moe_dispatcher = MoeDispatcher::allgather;
  expect_invariant(tiny_moe(), ag);
  if (world_size() >= 4) expect_invariant(tiny_moe(), tensor_layout(2, true, 4));  // EP over TP x DP
}

// Expert-tensor parallelism: each expert's hidden width split over the ETP ranks.
TEST(Invariance, ExpertTensorParallel) {
  expect_invariant(tiny_moe(), tensor_layout(2, true, 1, 2));
  ParallelConfig ag = tensor_layout(2, true, 1, 2);
  ag.moe_dispatcher = MoeDispatcher::allgather;
  expect_invariant(tiny_moe(), ag);
  if (world_size() >= 4) {
    expect_invariant(tiny_moe(), tensor_layout(2, true, 2, 2));  // TP 2 x EP 2 with ETP 2
    ParallelConfig ag4 = tensor_layout(2, true, 2, 2);
    ag4.moe_dispatcher = MoeDispatcher::allgather;
    expect_invariant(tiny_moe(), ag4);
  }
}

// ZeRO-1: gradients reduce-scattered, Adam moments for the owned shard only, parameters gathered.
// bf16 compute under the layouts whose GEMMs split differently: TP + SP with experts folded over
// TP (row-parallel partial sums), ETP, EP over all ranks with the distributed optimizer, and CP
// (attention on sequence chunks, both variants).
TEST(Invariance, Bf16Compute) {
  ModelConfig c = tiny_moe();
  c.precision = Precision::bf16;
  expect_invariant(c, tensor_layout(2, true, 2));
  expect_invariant(c, tensor_layout(2, true, 1, 2));
  expect_invariant(c, layout(max_ep()), {}, true);
  // Context parallelism (attention's bf16 block products on chunks), on the dense model: under
  // CP an MoE's router sees bf16-noisy inputs, and a near-tie that flips one token's expert moves
  // that expert's gradient by a whole token, which says nothing about CP.
  ModelConfig d = tiny_dense();
  d.precision = Precision::bf16;
  ParallelConfig cp;
  cp.cp = 2;
  expect_invariant(d, cp);
  cp.cp_comm = CpComm::all_gather;
  expect_invariant(d, cp);
}

TEST(Invariance, DistributedOptimizer) {
  expect_invariant(tiny_moe(), layout(1), {}, true);                 // DP = world
  expect_invariant(tiny_moe(), layout(max_ep()), {}, true);      // experts: EDP = 1
  expect_invariant(tiny_moe(), tensor_layout(2, true, 1, 2), {}, true);
  if (world_size() >= 4) expect_invariant(tiny_moe(), layout(2), {}, true);  // EDP = 2
}

TEST(DistributedOptimizer, StateShrinksWithTheDataParallelSize) {
  Communicator world = Communicator::world();
  Communicator self = Communicator::self();
  ParallelGrid grid(world, ParallelConfig{}), one(self, ParallelConfig{});
  ModelConfig c = tiny_dense();
  DecoderLM model(c, grid, 1), ref(c, one, 1);
  OptimizerConfig oc;
  DistributedAdamW dist(model.params(), oc, grid), whole(ref.params(), oc, one);
  // Each rank holds 1/DP of the (padded) moments.
  EXPECT_EQ(dist.state_bytes() * world.size(), model.params().numel() * 8);
  EXPECT_LE(dist.state_bytes() * world.size(), whole.state_bytes() + 8 * world.size());
}

// Context parallelism: each sequence cut into 2 CP chunks, rank r holding chunks r and 2CP-1-r,
// K/V all-gathered over CP; the loss and token counts reduced over CP.
TEST(Invariance, ContextParallel) {
  ParallelConfig pc;
  pc.cp = 2;
  expect_invariant(tiny_dense(), pc);
  expect_invariant(tiny_moe(), pc);
  pc.cp_comm = CpComm::all_gather;  // the other variant (ring is the default)
  expect_invariant(tiny_dense(), pc);
  pc.cp_comm = CpComm::ring;
  if (world_size() >= 4) {
    pc.cp = 4;
    expect_invariant(tiny_moe(), pc);
    pc.cp_comm = CpComm::all_gather;
    expect_invariant(tiny_moe(), pc);
    ParallelConfig mixed = tensor_layout(2, true, 4);  // TP 2 x CP 2, EP 4 folded over TP x CP
    mixed.cp = 2;
    expect_invariant(tiny_moe(), mixed);
    expect_invariant(tiny_moe(), mixed, {}, true);  // and the distributed optimizer over DP x CP
  }
}

// Frozen parameters under every kind of split: the embedding (vocabulary-parallel), a router and
// shared expert (TP-replicated / column-row parallel), the experts of one layer (EP, ETP), norms.
TEST(Invariance, FrozenParameters) {
  ModelConfig c = tiny_moe();
  c.moe_shared_expert_hidden = 10;
  const std::vector<std::string> frozen = {"model.embed_tokens.*", "model.layers.0.mlp.gate.*",
                                           "model.layers.0.mlp.experts.*", "model.layers.1.mlp.shared_expert.*",
                                           "*input_layernorm*"};
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  DecoderLM whole(c, one, 1, frozen);
  for (const std::string& glob : frozen) {
    int matched = 0;
    for (const Param& p : whole.params().params()) matched += !p.trainable && matches_any(p.name, {glob});
    EXPECT_GT(matched, 0) << glob;
  }
  expect_invariant(c, layout(max_ep()), {}, false, frozen);
  expect_invariant(c, layout(max_ep()), {}, true, frozen);  // the distributed optimizer
  if (world_size() >= 4) expect_invariant(c, tensor_layout(2, true, 2, 2), {}, false, frozen);
}

// Every adapter's B set away from zero (a function of each element's global position, the same
// on every layout), so that both factors carry gradient.
void nonzero_lora_b(DecoderLM& m) {
  for (Param& p : m.params().params()) {
    if (p.name.find(".lora_B.") == std::string::npos) continue;
    const int64_t cols = p.local_shape[1];
    for (int64_t i = 0; i < p.numel(); ++i) {
      const int64_t gr = p.local_offset[0] + i / cols, gc = p.local_offset[1] + i % cols;
      p.value[i] = 0.3f * std::sin(1.7f * static_cast<float>(gr * 31 + gc) + static_cast<float>(p.name.size()));
    }
  }
  m.mark_values_changed();
}

// LoRA adapters under TP (with and without SP), DP with the distributed optimizer, and EP: the
// base frozen, A whole beside a column-parallel weight and B whole beside a row-parallel one,
// their partial gradients summed over TP. B is set away from zero (a function of each element's
// global position, the same on every layout) so that both factors carry gradient.
TEST(Invariance, LoraAdapters) {
  ModelConfig c = tiny_moe();
  c.layer_pattern = "*-*E";
  c.ffn_hidden = 20;
  c.moe_shared_expert_hidden = 10;
  c.lora_rank = 2;
  c.lora_alpha = 4;
  c.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  const ModelSetup nonzero_b = nonzero_lora_b;
  expect_invariant(c, layout(max_ep()), nonzero_b);
  expect_invariant(c, layout(max_ep()), nonzero_b, true);
  expect_invariant(c, tensor_layout(2, true, 2), nonzero_b);
  ModelConfig dense = c;
  dense.layer_pattern = "*-*-";
  dense.num_experts = 0;
  expect_invariant(dense, tensor_layout(2, false), nonzero_b);
}

// LoRA on the routed experts (lora_targets experts): per expert A_e [r, in], B_e [out, r] beside
// the frozen experts, reduced over expert-DP like the experts. Under ETP gate/up keep A whole and
// slice B, down slices A and keeps B whole; the whole factor's gradient is summed over the ETP
// group, which is not the TP group here: ETP 2 with TP 1 (EP folded over the other ranks), TP 2
// with ETP 1 (EP folded over TP), TP 2 x ETP 2. B is set away from zero as above.
// Same tolerances as every fp32 layout (header): the layouts compute the same sums in another
// order. One step is compared (forward, backward, reduction, Adam, the values after it): this
// model has adapter gradient elements within fp32 rounding of zero (one at 2e-7 of its tensor's
// largest, below the 1e-4 tolerance), for which Adam's first update g / (|g| + 1e-8) lr differs
// between layouts by up to 2 lr. The values check allows for that (AdamAllowance), but from the
// second step on such an element, 3e-4 apart, moves other gradients by more than the rounding
// tolerance: the header's bf16 case, here in fp32.
TEST(Invariance, LoraOnExperts) {
  ModelConfig c = tiny_moe();
  c.lora_rank = 2;
  c.lora_alpha = 4;
  c.lora_targets = "q_proj,o_proj,experts";
  const ModelSetup nonzero_b = nonzero_lora_b;
  auto expect = [&](const ParallelConfig& pc, bool distributed) {
    expect_invariant(c, pc, nonzero_b, distributed, {}, 1);
  };
  expect(layout(max_ep()), false);
  expect(layout(max_ep()), true);
  expect(tensor_layout(1, false, 1, 2), false);  // ETP 2 over TP 1
  expect(tensor_layout(1, false, 1, 2), true);   // and the distributed optimizer
  expect(tensor_layout(2, true, 2), false);      // EP 2 folded over TP 2, ETP 1
  expect(tensor_layout(2, true, 1, 2), false);   // ETP = TP 2
  expect(tensor_layout(2, true, 1, 2), true);
  if (world_size() >= 4) {
    expect(layout(2), true);                      // EP 2 x EDP 2
    expect(tensor_layout(1, false, 2, 2), false);  // EP 2 x ETP 2 over TP 1
    expect(tensor_layout(1, false, 2, 2), true);
    expect(tensor_layout(2, true, 2, 2), false);   // TP 2 x EP 2 x ETP 2
    expect(tensor_layout(2, true, 2, 2), true);
  }
  ModelConfig b = c;  // bf16 GEMMs (the gate/up adapters keep the pre-activation fp32); the header's bf16 tolerances
  b.precision = Precision::bf16;
  expect_invariant(b, tensor_layout(1, false, 1, 2), nonzero_b);
  expect_invariant(b, layout(max_ep()), nonzero_b, true);
  // Where the experts' factors are whole over ETP they are marked so, and only there.
  Communicator world = Communicator::world();
  ParallelGrid grid(world, tensor_layout(1, false, 1, 2));
  DecoderLM m(c, grid, 11);
  int whole = 0;
  for (const Param& p : m.params().params()) {
    if (!is_adapter_name(p.name) || p.name.find(".experts.") == std::string::npos) continue;
    EXPECT_TRUE(p.expert) << p.name;
    EXPECT_FALSE(p.tp_partial_grad) << p.name;
    const bool a = p.name.find(".lora_A.") != std::string::npos, down = p.name.find("down_proj") != std::string::npos;
    EXPECT_EQ(p.etp_partial_grad, a != down) << p.name;  // A of gate/up, B of down
    EXPECT_EQ(p.replica, p.etp_partial_grad && grid.etp().rank() > 0) << p.name;
    whole += p.etp_partial_grad;
  }
  EXPECT_EQ(whole, 2 * 3 * 4);  // 2 layers x 3 projections x 4 experts
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

TEST(Invariance, PipelineOneFOneB) {
  ParallelConfig pc;
  pc.pp = 2;
  expect_pipeline_invariant(tiny_moe(), pc, 4);
  expect_pipeline_invariant(tiny_dense(), pc, 3);
  if (world_size() >= 4) {
    pc.pp = 4;
    expect_pipeline_invariant(tiny_moe(), pc, 4);
  }
}

TEST(Invariance, PipelineWithTiedEmbeddings) {
  ModelConfig c = tiny_moe();
  c.tie_embeddings = true;
  ParallelConfig pc;
  pc.pp = 2;
  expect_pipeline_invariant(c, pc, 2);
  if (world_size() >= 4) {
    pc.pp = 4;
    expect_pipeline_invariant(c, pc, 4);
  }
}

TEST(Invariance, PipelineInterleavedTwoVirtualStages) {
  ParallelConfig pc;
  pc.pp = 2;
  pc.virtual_stages = 2;
  expect_pipeline_invariant(tiny_moe(), pc, 4);
}

// Hybrid Mamba2 models (Nemotron-H): TP splits the Mamba heads and groups (with and without SP),
// DP with both optimizers, EP over the MoE layers of a hybrid, and pipeline stages holding any mix
// of kinds.
TEST(Invariance, HybridMamba) {
  expect_invariant(tiny_hybrid(), layout(1));
  expect_invariant(tiny_hybrid(), layout(1), {}, true);
  expect_invariant(tiny_hybrid(), tensor_layout(2, false));
  expect_invariant(tiny_hybrid(), tensor_layout(2, true));
  expect_invariant(tiny_hybrid(true), layout(max_ep()));
  expect_invariant(tiny_hybrid(true), tensor_layout(2, true, 2));  // folded: EP over the TP ranks
  ParallelConfig pc;
  pc.pp = 2;
  expect_pipeline_invariant(tiny_hybrid(), pc, 3);
  expect_pipeline_invariant(tiny_hybrid(true), pc, 2);
}

// Context parallelism for Mamba2: the all-to-all to whole sequences of a share of the heads and
// back (attention beside it keeps ring attention); with TP, CP splits each TP rank's groups.
TEST(Invariance, HybridMambaContextParallel) {
  ParallelConfig pc;
  pc.cp = 2;
  expect_invariant(tiny_hybrid(), pc);
  expect_invariant(tiny_hybrid(true), pc, {}, true);  // hybrid MoE, distributed optimizer over DP x CP
  if (world_size() >= 4) {
    ModelConfig c = tiny_hybrid();
    c.mamba_groups = 4;  // one head per group: TP 2 x CP 2 gives each rank one group
    ParallelConfig mixed = tensor_layout(2, true);
    mixed.cp = 2;
    // Two steps: with one head per group, D and dt_bias of a head get a gradient that is one sum
    // over every row and cancels; Adam's first steps are sign-like there, so a rounding-sized
    // difference can move such a parameter by up to 2 lr in one run and not the other, and the
    // third step's gradients then differ by more than the gradient tolerance says (the values
    // check allows for it; the gradient check does not).
    expect_invariant(c, mixed, {}, false, {}, 2);
    pc.cp = 4;
    expect_invariant(c, pc, {}, false, {}, 2);
  }
}

// All five dimensions at once: TP 2 x CP 2 x PP 2 with EP 4 folded over TP x CP (8 ranks).
TEST(Invariance, AllFiveDimensions) {
  if (world_size() != 8) GTEST_SKIP() << "needs 8 ranks";
  ParallelConfig pc = tensor_layout(2, true, 4);
  pc.cp = 2;
  pc.pp = 2;
  expect_pipeline_invariant(tiny_moe(), pc, 2);
}

}  // namespace
}  // namespace ff
