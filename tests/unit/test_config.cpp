// Configs, presets, parameter counts, FLOPs and the rank grid.
#include <gtest/gtest.h>

#include "io/config_json.h"
#include "models/config.h"
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
