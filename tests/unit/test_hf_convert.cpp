// Hugging Face import/export: to HF and back is bit-identical with equal logits for the Llama,
// Mixtral and Qwen2-MoE layouts (sharded too); unknown, missing and non-zero-bias keys are errors.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/config_json.h"
#include "io/hf_convert.h"
#include "models/decoder_lm.h"

#include "test_util.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) { return test::fresh_dir("hf_" + name); }

ModelConfig tiny(const std::string& preset) {
  ModelConfig c = model_preset(preset);
  c.vocab_size = 64;
  c.d_model = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 16;
  c.ffn_hidden = 48;
  if (c.num_experts > 0) {
    c.num_experts = 4;
    c.moe_top_k = 2;
    c.moe_ffn_hidden = 24;
  }
  if (c.moe_shared_expert_hidden > 0) c.moe_shared_expert_hidden = 40;
  return c;
}

TensorMap tensors_of(DecoderLM& m) {
  TensorMap t;
  for (const Param& p : m.params().params())
    t[p.name] = {p.global_shape.vec(), std::vector<float>(p.value, p.value + p.numel())};
  return t;
}

std::vector<float> logits(DecoderLM& m) {
  auto mb = m.new_micro_batch();
  std::vector<int32_t> tokens(32);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 5) % 64);
  m.forward(*mb, tokens.data(), nullptr, 2, 16);
  return std::vector<float>(m.logits(*mb), m.logits(*mb) + 32 * 64);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

struct Case {
  const char* preset;
  HfFamily family;
  bool tied;
  int64_t shard_bytes;
};

TEST(HfConvert, RoundTripIsBitIdenticalWithEqualLogits) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  for (const Case& k : {Case{"llama-small", HfFamily::llama, false, int64_t(1) << 30},
                        Case{"llama-small", HfFamily::llama, true, 20000},  // tied, sharded
                        Case{"mixtral-small", HfFamily::mixtral, false, 30000},
                        Case{"qwen2-moe-small", HfFamily::qwen2_moe, false, int64_t(1) << 30}}) {
    SCOPED_TRACE(k.preset + std::string(k.tied ? " tied" : ""));
    ModelConfig c = tiny(k.preset);
    c.tie_embeddings = k.tied;
    DecoderLM a(c, grid, 11);
    const std::string dir = fresh_dir(std::string(k.preset) + (k.tied ? "_tied" : ""));
    HfExportOptions o;
    o.max_shard_bytes = k.shard_bytes;
    export_hf(c, tensors_of(a), dir, o);
    const bool sharded = k.shard_bytes < (int64_t(1) << 30);
    EXPECT_EQ(fs::exists(dir + "/model.safetensors.index.json"), sharded);
    EXPECT_EQ(fs::exists(dir + "/model.safetensors"), !sharded);

    HfImport imp = import_hf(dir);
    EXPECT_EQ(imp.family, k.family);
    ModelConfig c2 = imp.model;
    if (c.pattern().find('-') == std::string::npos) c2.ffn_hidden = c.ffn_hidden;  // no dense layer: unused
    EXPECT_EQ(config_to_json(c2), config_to_json(c)) << "config.json does not round-trip";
    DecoderLM b(c2, grid, 999);
    for (Param& p : b.params().params()) {
      const HostTensor& t = imp.tensors.at(p.name);
      ASSERT_EQ(t.shape, p.global_shape.vec()) << p.name;
      std::copy(t.data.begin(), t.data.end(), p.value);
    }
    EXPECT_EQ(imp.tensors.size(), b.params().params().size());
    ASSERT_EQ(a.params().numel(), b.params().numel());
    EXPECT_EQ(0, std::memcmp(a.params().values(), b.params().values(), sizeof(float) * a.params().numel()));
    EXPECT_EQ(logits(a), logits(b));
    fs::remove_all(dir);
  }
}

TEST(HfConvert, WritesTheFamilyNamesAndConfigKeys) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  {
    ModelConfig c = tiny("mixtral-small");
    DecoderLM m(c, grid, 1);
    const std::string dir = fresh_dir("mixtral_names");
    export_hf(c, tensors_of(m), dir, {});
    SafetensorsFile f(dir + "/model.safetensors");
    EXPECT_EQ(f.metadata().at("format"), "pt");
    for (const char* n : {"model.layers.1.block_sparse_moe.gate.weight", "model.layers.0.block_sparse_moe.experts.3.w1.weight",
                          "model.layers.0.block_sparse_moe.experts.3.w2.weight", "lm_head.weight"})
      EXPECT_TRUE(f.contains(n)) << n;
    EXPECT_EQ(f.info("model.layers.0.block_sparse_moe.experts.3.w2.weight").shape, (std::vector<int64_t>{32, 24}));
    auto cj = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
    EXPECT_EQ(cj["model_type"], "mixtral");
    EXPECT_EQ(cj["num_local_experts"], 4);
    EXPECT_EQ(cj["intermediate_size"], 24);
    fs::remove_all(dir);
  }
  {
    ModelConfig c = tiny("qwen2-moe-small");
    DecoderLM m(c, grid, 1);
    const std::string dir = fresh_dir("qwen_names");
    HfExportOptions o;
    o.bf16 = true;
    export_hf(c, tensors_of(m), dir, o);
    SafetensorsFile f(dir + "/model.safetensors");
    EXPECT_EQ(f.info("model.layers.0.self_attn.k_proj.bias").shape, (std::vector<int64_t>{16}));
    EXPECT_EQ(f.info("model.layers.0.mlp.shared_expert_gate.weight").dtype, StDtype::BF16);
    // BF16 export: within bf16 rounding of the fp32 weights.
    HfImport imp = import_hf(dir);
    const Param* p = m.params().find("model.layers.1.mlp.experts.2.up_proj.weight");
    const HostTensor& t = imp.tensors.at(p->name);
    for (int64_t i = 0; i < p->numel(); ++i) EXPECT_NEAR(t.data[i], p->value[i], std::fabs(p->value[i]) / 256 + 1e-30);
    fs::remove_all(dir);
  }
}

TEST(HfConvert, UnknownMissingAndNonZeroBiasKeysAreErrors) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = tiny("qwen2-moe-small");
  DecoderLM m(c, grid, 1);
  const std::string dir = fresh_dir("errors");
  export_hf(c, tensors_of(m), dir, {});
  const std::string file = dir + "/model.safetensors";
  auto rewrite = [&](const std::function<void(std::map<std::string, HostTensor>&)>& edit) {
    std::map<std::string, HostTensor> all;
    {
      SafetensorsFile f(file);
      for (const auto& n : f.names()) all[n] = f.read_any(n);
    }
    edit(all);
    std::vector<SafetensorsEntry> e;
    for (auto& [n, t] : all) e.push_back({n, t.shape, t.data.data()});
    write_safetensors(file, e, {{"format", "pt"}});
  };
  auto expect = [&](const std::vector<std::string>& needles) {
    const std::string msg = error_of([&] { import_hf(dir); });
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  };
  // Listed as ignored: accepted.
  rewrite([](auto& all) { all["model.layers.0.self_attn.rotary_emb.inv_freq"] = {{4}, {1, 2, 3, 4}}; });
  EXPECT_NO_THROW(import_hf(dir));
  rewrite([](auto& all) { all["model.layers.0.mlp.experts.0.w9.weight"] = {{1}, {1}}; });
  expect({"unknown tensor 'model.layers.0.mlp.experts.0.w9.weight'", file});
  rewrite([](auto& all) {
    all.erase("model.layers.0.mlp.experts.0.w9.weight");
    all["model.layers.1.self_attn.q_proj.bias"].data[3] = 0.5f;
  });
  expect({"model.layers.1.self_attn.q_proj.bias", "non-zero bias", file});
  rewrite([](auto& all) {
    all["model.layers.1.self_attn.q_proj.bias"].data[3] = 0.0f;
    all.erase("model.layers.1.mlp.experts.3.down_proj.weight");
  });
  expect({"model.layers.1.mlp.experts.3.down_proj.weight", "missing"});
  // A config.json fivefold cannot express.
  auto cj = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  cj["hidden_act"] = "gelu";
  std::ofstream(dir + "/config.json") << cj.dump();
  expect({"config.json", "hidden_act"});
  // Sizes are whole numbers in range, never truncated (64.5 -> 64) or wrapped (1e30 -> negative).
  cj["hidden_act"] = "silu";
  for (const nlohmann::json& v : {nlohmann::json(64.5), nlohmann::json(1e30), nlohmann::json(-8)}) {
    cj["hidden_size"] = v;
    std::ofstream(dir + "/config.json") << cj.dump();
    expect({"config.json", "'hidden_size' = " + v.dump(), "not a whole number"});
  }
  cj["hidden_size"] = c.d_model;
  cj["max_position_embeddings"] = 1e12;
  std::ofstream(dir + "/config.json") << cj.dump();
  expect({"config.json", "'max_position_embeddings'", "not a whole number"});
  fs::remove_all(dir);

  // Export: a tensor with no HF name, and a config the layout cannot express.
  TensorMap t = tensors_of(m);
  t["model.layers.0.mlp.gate.expert_bias"] = {{4}, {0, 0, 0, 0}};
  EXPECT_NE(error_of([&] { export_hf(c, t, dir, {}); }).find("model.layers.0.mlp.gate.expert_bias"), std::string::npos);
  ModelConfig bad = c;
  bad.moe_router_pre_softmax = false;
  bad.activation = Activation::gelu;
  const std::string msg = error_of([&] { hf_family_for(bad, "auto"); });
  EXPECT_NE(msg.find("model.activation"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.moe_router_pre_softmax"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(HfConvert, TableTemplatesMatchAndFill) {
  EXPECT_EQ(hf_fill("model.layers.{L}.mlp.experts.{E}.w1.weight", 3, 12), "model.layers.3.mlp.experts.12.w1.weight");
  EXPECT_TRUE(hf_match("model.layers.{L}.self_attn.rotary_emb.inv_freq", "model.layers.17.self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(hf_match("model.layers.{L}.self_attn.rotary_emb.inv_freq", "model.layers..self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(hf_match("model.layers.{L}.x", "model.layers.1.xy"));
}

}  // namespace
}  // namespace ff
