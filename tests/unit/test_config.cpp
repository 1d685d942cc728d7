// Configs, presets, parameter counts, FLOPs and the rank grid.
#include <gtest/gtest.h>

#include "io/config_json.h"
#include "models/config.h"
#include "models/decoder_lm.h"
#include "parallel/grid.h"
#include "train/config.h"
#include "train/flops.h"

namespace ff {
namespace {

bool mentions(const std::vector<std::string>& errors, const std::string& what) {
  for (const auto& e : errors)
    if (e.find(what) != std::string::npos) return true;
  return false;
}

TEST(Config, Nemotron4_15bCountsItsPublishedParameters) {
  ModelConfig c = model_preset("nemotron4-15b");
  EXPECT_TRUE(c.validate().empty());
  // methods.md §2.1: 12.48B non-embedding + 3.15B embedding = 15.63B.
  EXPECT_EQ(count_parameters(c), 15628775424);
  EXPECT_NEAR(count_parameters(c) / 1e9, 15.63, 0.005);
}

// methods.md §3.1: Nemotron-H 8B counts 8.10B (Mamba 2.63B, MLP 4.23B, attention 0.17B,
// embeddings 1.07B); the pruned 4B 4.49B (3.68B without the embeddings).
TEST(Config, NemotronHCountsTheSpecsParameters) {
  ModelConfig c = model_preset("nemotron-h-8b");
  ASSERT_TRUE(c.validate().empty());
  const int64_t D = 4096, di = 128 * 64, gn = 8 * 128, H = 128;
  const int64_t mamba = D * (2 * di + 2 * gn + H) + (di + 2 * gn) * 4 + (di + 2 * gn) + 3 * H + di + di * D;
  const int64_t mlp = 2 * D * 21504, attention = D * (32 * 128 + 2 * 8 * 128) + 32 * 128 * D;
  const int64_t embeddings = 2 * int64_t(131072) * D;
  EXPECT_NEAR(24 * mamba / 1e9, 2.63, 0.005);
  EXPECT_NEAR(24 * mlp / 1e9, 4.23, 0.005);
  EXPECT_NEAR(4 * attention / 1e9, 0.17, 0.005);
  EXPECT_EQ(count_parameters(c), 24 * mamba + 24 * mlp + 4 * attention + embeddings + 53 * D);  // + 52 pre-norms, final norm
  EXPECT_EQ(count_parameters(c), 8100852736);
  ModelConfig small = model_preset("nemotron-h-4b");
  EXPECT_NEAR(count_parameters(small) / 1e9, 4.49, 0.005);
  EXPECT_NEAR((count_parameters(small) - 2 * 131072 * 3072) / 1e9, 3.68, 0.005);
}

// Megatron-LM's mamba_layer_flops times 3: per token 2 D (2 di + 2 G N + H) + 7 di N + 2 di D.
TEST(Flops, MambaLayersCountMegatronsFormula) {
  ModelConfig c = model_preset("nemotron-h-8b");
  ModelConfig no_mamba = c;
  no_mamba.layer_pattern = "M";
  const double D = 4096, di = 8192, N = 128;
  const double per_token = 3 * (2 * D * (2 * di + 2 * 8 * N + 128) + 7 * di * N + 2 * di * D);
  const double head = 6 * D * 131072;
  EXPECT_NEAR(training_flops(no_mamba, 2, 512) / (2 * 512), per_token + head, 1e-6 * per_token);
}

TEST(Config, MambaErrorsNameTheField) {
  ModelConfig c = model_preset("nemotron-h-small");
  c.mamba_num_heads = 6;  // not divisible by 4 groups
  c.mamba_groups = 4;
  c.mamba_state = 0;
  c.mamba_chunk = 0;
  c.mamba_dt_limit_min = 0.5;
  c.mamba_dt_limit_max = 0.1;
  auto e = c.validate();
  EXPECT_TRUE(mentions(e, "model.mamba_num_heads = 6 is not divisible by mamba_groups = 4"));
  EXPECT_TRUE(mentions(e, "model.mamba_state = 0"));
  EXPECT_TRUE(mentions(e, "model.mamba_chunk = 0"));
  EXPECT_TRUE(mentions(e, "model.mamba_dt_limit_min = 0.5"));
  EXPECT_EQ(e.size(), 4u);
  ModelConfig ok = model_preset("nemotron-h-small");  // 2 groups
  ParallelConfig tp4;
  tp4.tp = 4;
  tp4.sequence_parallel = true;
  EXPECT_TRUE(mentions(layout_problems(ok, tp4), "model.mamba_groups = 2 is not divisible by parallel.tp = 4"));
  ParallelConfig tp2cp2;
  tp2cp2.tp = 2;
  tp2cp2.cp = 2;
  EXPECT_TRUE(mentions(layout_problems(ok, tp2cp2), "not divisible by parallel.tp x parallel.cp = 4"));
  tp2cp2.cp = 1;
  EXPECT_TRUE(layout_problems(ok, tp2cp2).empty());
}

TEST(Config, EveryPresetIsValidAndBuildsItsPattern) {
  for (const auto& name : model_preset_names()) {
    ModelConfig c = model_preset(name);
    EXPECT_TRUE(c.validate().empty()) << name;
    EXPECT_FALSE(c.pattern().empty()) << name;
  }
  EXPECT_EQ(model_preset("mixtral-small").pattern(), "*E*E*E*E*E*E*E*E");
  EXPECT_EQ(model_preset("llama-small").pattern(), "*-*-*-*-*-*-*-*-");
  EXPECT_THROW(model_preset("gpt-17"), Error);
}

TEST(Config, ActiveParametersCountKOfEExperts) {
  ModelConfig c = model_preset("moe-small");
  const int64_t per_expert = 3 * c.d_model * c.moe_ffn_hidden;
  EXPECT_EQ(count_parameters(c) - count_active_parameters(c), 8 * (c.num_experts - c.moe_top_k) * per_expert);
}

TEST(Config, OneClearErrorPerProblemNamingTheField) {
  ModelConfig c;
  c.moe_top_k = 9;       // > E = 8
  c.num_kv_heads = 3;    // does not divide 8 heads
  c.d_model = -4;        // negative size
  auto e = c.validate();
  EXPECT_TRUE(mentions(e, "model.moe_top_k = 9")) << e.size();
  EXPECT_TRUE(mentions(e, "model.num_kv_heads = 3: must divide num_heads = 8"));
  EXPECT_TRUE(mentions(e, "model.d_model = -4"));
}

// Group-limited routing: each bad combination is exactly one error, naming its field.
TEST(Config, GroupLimitedRoutingErrorsOnePerProblem) {
  auto only = [](ModelConfig c, const std::string& what) {
    auto e = c.validate();
    EXPECT_EQ(e.size(), 1u) << what;
    EXPECT_TRUE(mentions(e, what)) << (e.empty() ? "no error" : e[0]);
  };
  ModelConfig c = model_preset("moe-tiny");  // 8 experts, top 2
  c.moe_router_groups = 4;
  c.moe_router_group_topk = 2;
  EXPECT_TRUE(c.validate().empty());
  ModelConfig bad = c;
  bad.moe_router_groups = 3;  // does not divide 8 experts
  only(bad, "model.moe_router_groups = 3 does not divide num_experts = 8");
  bad = c;
  bad.moe_router_group_topk = 5;  // of 4 groups
  bad.moe_top_k = 6;
  only(bad, "model.moe_router_group_topk = 5 exceeds moe_router_groups = 4");
  bad = c;
  bad.moe_router_group_topk = 1;  // one group of 2 experts, top 3
  bad.moe_top_k = 3;
  only(bad, "model.moe_top_k = 3 exceeds the experts of the chosen groups, moe_router_group_topk x num_experts / "
            "moe_router_groups = 1 x 2 = 2");
  bad = c;
  bad.moe_router_group_topk = 0;
  only(bad, "model.moe_router_group_topk = 0 with moe_router_groups = 4");
  bad = c;
  bad.moe_router_groups = 0;
  only(bad, "model.moe_router_group_topk = 2 needs moe_router_groups > 0");
  bad = c;
  bad.moe_router_group_topk = 3;  // more groups than the K = 2 experts it keeps
  only(bad, "model.moe_router_group_topk = 3 exceeds moe_top_k = 2");
}

TEST(Config, JsonRejectsUnknownFieldsAndBadValuesAllAtOnce) {
  try {
    run_config_from_json(R"({"model": {"d_modle": 5, "activation": "relu", "num_heads": "8"}, "trian": {}})", "x.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("model.d_modle: unknown field"), std::string::npos) << m;
    EXPECT_NE(m.find("model.activation = \"relu\": must be one of swiglu|squared_relu|gelu"), std::string::npos) << m;
    EXPECT_NE(m.find("model.num_heads = \"8\": must be an integer"), std::string::npos) << m;
    EXPECT_NE(m.find("trian: unknown section"), std::string::npos) << m;
    EXPECT_NE(m.find("4 problem(s)"), std::string::npos) << m;
  }
  EXPECT_THROW(run_config_from_json("{not json", "y.json"), Error);
}

TEST(Config, JsonRoundTripAndPresetThenOverrides) {
  RunConfig c = run_config_from_json(R"({"train": {"model_preset": "qwen2-moe-small", "steps": 7},
                                         "model": {"moe_top_k": 2}, "parallel": {"tp": 1}})", "z.json");
  EXPECT_EQ(c.model.num_experts, 16);  // from the preset
  EXPECT_EQ(c.model.moe_top_k, 2);     // the override
  EXPECT_EQ(c.train.steps, 7);
  RunConfig again = run_config_from_json(run_config_to_json(c), "round trip");
  EXPECT_EQ(run_config_to_json(again), run_config_to_json(c));
}

TEST(Flops, MatchesTheSpecTestVector) {
  // specs/parallelism-and-moe.md §11: Mixtral-8x7B-like, s = 4096, B = 1 -> 3.2648e14.
  ModelConfig c;
  c.d_model = 4096; c.num_layers = 32; c.num_heads = 32; c.num_kv_heads = 8; c.head_dim = 128;
  c.num_experts = 8; c.moe_top_k = 2; c.moe_ffn_hidden = 14336; c.vocab_size = 32000; c.seq_len = 4096;
  EXPECT_NEAR(training_flops(c, 1, 4096) / 3.2648e14, 1.0, 1e-4);
  EXPECT_NEAR(training_flops(c, 1, 4096) / 4096 / 1e9, 79.71, 0.01);
  c.num_experts = 0; c.ffn_hidden = 14336;  // the same shape as a dense model
  EXPECT_NEAR(training_flops(c, 1, 4096) / 4096 / 1e9, 45.88, 0.01);
}

TEST(Grid, RankGroupsMatchTheSpecExample) {
  // §1.4: 8 ranks, TP 2, CP 2, PP 2 (attention); ETP 1, EP 4, PP 2 (experts).
  std::array<int64_t, kNumAxes> attn = {2, 2, 1, 1, 2}, expert = {1, 1, 4, 1, 2};
  using G = std::vector<std::vector<int>>;
  EXPECT_EQ(rank_groups(attn, {kTp}), (G{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(rank_groups(attn, {kCp}), (G{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(rank_groups(attn, {kCp, kDp}), (G{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(rank_groups(attn, {kPp}), (G{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(rank_groups(attn, {kTp, kCp}), (G{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(rank_groups(expert, {kEp}), (G{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(rank_groups(expert, {kPp}), rank_groups(attn, {kPp}));
}

TEST(Grid, SingleProcessIsTheGridOfOnes) {
  Communicator world = Communicator::world();
  ParallelGrid g(world, ParallelConfig{});
  EXPECT_EQ(g.tp().size(), 1);
  EXPECT_EQ(g.ep().size(), 1);
  EXPECT_EQ(g.dp_size(), 1);
  ParallelConfig bad;
  bad.tp = 2;
  auto e = bad.validate(1);
  EXPECT_TRUE(mentions(e, "world size 1 is not divisible by tp*cp*pp"));
  bad.ep = 0;
  EXPECT_TRUE(mentions(bad.validate(1), "parallel.ep = 0"));
}

}  // namespace
}  // namespace ff
