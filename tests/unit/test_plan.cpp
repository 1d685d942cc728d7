// `fivefold plan`: memory terms follow the layout the way the implementation allocates.
#include <gtest/gtest.h>

#include "core/check.h"
#include "models/decoder_lm.h"
#include "models/layer_kind.h"
#include "train/plan.h"

namespace ff {
namespace {

PlanInput small(int64_t world) {
  PlanInput in;
  in.model = model_preset("moe-small");
  in.world = world;
  in.micro_batch = 4;
  in.grad_accum = 2;
  return in;
}

// Sizes too large for the memory are refused before anything is allocated, naming the fields and
// the bytes (issue: --vocab_size 2000000000 and --micro_batch 100000000 ended in std::bad_alloc).
TEST(Plan, RunsThatDoNotFitTheMemoryAreRefusedNamingTheFields) {
  const double gib = 1024.0 * 1024 * 1024;
  auto error_of = [](const PlanInput& in, double available) -> std::string {
    try {
      check_planned_memory(in, available);
    } catch (const UserError& e) {
      return e.what();
    }
    return "";
  };
  PlanInput in = small(1);
  EXPECT_EQ(error_of(in, 24 * gib), "");
  const Plan fits = plan_layout(in, DeviceSpec{});
  EXPECT_NE(error_of(in, 0.5 * fits.total()), "");  // the plan's own total decides
  EXPECT_EQ(error_of(in, 1.01 * fits.total()), "");
  PlanInput vocab = in;
  vocab.model.vocab_size = 2000000000;
  std::string msg = error_of(vocab, 24 * gib);
  EXPECT_NE(msg.find("model.vocab_size = 2000000000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("24.0 GiB available per rank"), std::string::npos) << msg;
  PlanInput batch = in;
  batch.micro_batch = 100000000;
  msg = error_of(batch, 24 * gib);
  EXPECT_NE(msg.find("train.micro_batch = 100000000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("activations"), std::string::npos) << msg;
}

TEST(Plan, OneRankHoldsTheWholeModel) {
  DeviceSpec dev;
  Plan p = plan_layout(small(1), dev);
  ASSERT_TRUE(p.problems.empty());
  EXPECT_DOUBLE_EQ(p.weights, 4.0 * static_cast<double>(count_parameters(model_preset("moe-small"))));
  EXPECT_DOUBLE_EQ(p.grads, p.weights);
  EXPECT_DOUBLE_EQ(p.optimizer, 2 * p.weights);  // Adam moments
  EXPECT_GT(p.activations, 0);
  EXPECT_EQ(p.communication_s, 0);
  EXPECT_EQ(p.bubble_s, 0);
}

// LoRA on the routed experts only: one process trains exactly the adapters count_parameters adds
// (4 bytes of gradient each); EP splits them with the experts.
TEST(Plan, ExpertAdaptersAreExpertParameters) {
  DeviceSpec dev;
  PlanInput in = small(1);
  in.model.lora_rank = 4;
  in.model.lora_targets = "experts";
  ModelConfig base = in.model;
  base.lora_rank = 0;
  const Plan one = plan_layout(in, dev);
  ASSERT_TRUE(one.problems.empty());
  EXPECT_DOUBLE_EQ(one.grads, 4.0 * static_cast<double>(count_parameters(in.model) - count_parameters(base)));
  in.world = 4;
  in.layout.ep = 4;
  const Plan ep = plan_layout(in, dev);
  ASSERT_TRUE(ep.problems.empty());
  EXPECT_DOUBLE_EQ(ep.grads, one.grads / 4);
}

TEST(Plan, ParallelismDividesWhatItShards) {
  DeviceSpec dev;
  PlanInput in = small(4);
  Plan dp = plan_layout(in, dev);  // DP 4: everything replicated
  in.distributed_optimizer = true;
  Plan zero = plan_layout(in, dev);
  EXPECT_NEAR(zero.optimizer, dp.optimizer / 4, dp.optimizer * 1e-9);
  EXPECT_GT(dp.communication_s, 0);
  in.distributed_optimizer = false;
  in.layout.ep = 4;  // experts split four ways: 8 experts -> 2 per rank
  Plan ep = plan_layout(in, dev);
  EXPECT_LT(ep.weights, dp.weights / 2);
  in.layout.ep = 1;
  in.layout.pp = 2;
  Plan pp = plan_layout(in, dev);
  EXPECT_LT(pp.weights, 0.6 * dp.weights);
  EXPECT_GT(pp.bubble_s, 0);
  in.layout.pp = 3;  // 16 layers but 4 ranks: not divisible
  EXPECT_FALSE(plan_layout(in, dev).problems.empty());
}

// The EP all-to-all bytes of an MoE layer: K rows of D per token with alltoall; with the token
// all-to-all at most the ranks a token reaches (with its K ids and probs), which group-limited
// routing with the groups on the EP ranks bounds by moe_router_group_topk.
TEST(Plan, TokenAllToAllWithGroupsOnTheRanksMovesGroupTopkRowsPerToken) {
  ModelConfig c = model_preset("moe-small");  // E 8, K 2, D 512
  ParallelConfig p;
  p.ep = 4;
  const LayerKindInfo& moe = layer_kind(LayerKind::moe);
  const double per_expert = moe.traffic(c, p, 4).bytes;
  p.moe_dispatcher = MoeDispatcher::alltoall_dedup;
  EXPECT_NEAR(moe.traffic(c, p, 4).bytes, per_expert * (c.d_model + 2.0 * c.moe_top_k) / c.d_model, 1e-9 * per_expert);
  c.moe_router_groups = 4;  // one group per EP rank, one group per token: one row per token
  c.moe_router_group_topk = 1;
  EXPECT_NEAR(moe.traffic(c, p, 4).bytes, per_expert * (c.d_model + 2.0 * c.moe_top_k) / (2.0 * c.d_model),
              1e-9 * per_expert);
  c.moe_pad_to_capacity = true;
  c.moe_capacity_factor = 1.0;
  bool named = false;
  for (const std::string& e : layout_problems(c, p)) named |= e.find("moe_pad_to_capacity") != std::string::npos;
  EXPECT_TRUE(named);
}

TEST(Plan, AllLayoutsAreValidAndThoseThatFitComeFirstFastestFirst) {
  DeviceSpec dev;
  dev.memory_gib = 3.0;
  auto all = plan_all_layouts(small(8), dev);
  ASSERT_GT(all.size(), 10u);
  const double cap = dev.memory_gib * 1024 * 1024 * 1024;
  bool seen_unfit = false;
  double last = 0;
  for (const auto& [layout, plan] : all) {
    EXPECT_TRUE(plan.problems.empty());
    const bool fits = plan.total() <= cap;
    if (!fits) seen_unfit = true;
    EXPECT_FALSE(fits && seen_unfit) << "a fitting layout after one that does not fit";
    if (fits) {
      EXPECT_GE(plan.step_s(), last);
      last = plan.step_s();
    }
  }
  EXPECT_FALSE(plan_table(all, dev).empty());
}

}  // namespace
}  // namespace ff
