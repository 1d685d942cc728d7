// The contract of the parallel layouts (DESIGN decision 5): for a tiny MoE model, fixed seed and
// data, the losses and gradients of several steps under a layout equal those of one process that
// runs the same micro-batches with gradient accumulation (the harness and its tolerances:
// invariance_harness.h / .cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "invariance.h"
#include "invariance_harness.h"
#include "models/decoder_lm.h"
#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "tiny_model.h"

namespace ff {
namespace {

using namespace test;  // invariance.h, invariance_harness.h, tiny_model.h

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
