// Hugging Face import/export: to HF and back is bit-identical with equal logits for the Llama,
// Mixtral, Qwen2-MoE and Nemotron-H layouts (sharded too); unknown, missing and non-zero-bias keys
// are errors; Nemotron-H's fused tensors hold their parts where HF has them, both of its name
// roots import, and every config.json it cannot represent is one clear error.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>

#include "io/config_json.h"
#include "models/hf_convert.h"
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


// --- Nemotron-H.

// A tiny hybrid whose in_proj parts differ in size: di = H P = 12, G N = 10, H = 4 (rows 12 | 12 |
// 10 | 10 | 4), conv channels 12 | 10 | 10.
ModelConfig tiny_hybrid() {
  ModelConfig c = model_preset("nemotron-h-small");
  c.vocab_size = 64;
  c.d_model = 32;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 16;
  c.ffn_hidden = 48;
  c.layer_pattern = "M-M*-";
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 3;
  c.mamba_groups = 2;
  c.mamba_state = 5;
  c.mamba_chunk = 8;
  return c;
}

// Every tensor of dir's model.safetensors renamed by `rename` ("": dropped), the file rewritten.
void rewrite_names(const std::string& dir, const std::function<std::string(const std::string&)>& rename) {
  std::map<std::string, HostTensor> all;
  {
    SafetensorsFile f(dir + "/model.safetensors");
    for (const auto& n : f.names())
      if (!rename(n).empty()) all[rename(n)] = f.read_any(n);
  }
  std::vector<SafetensorsEntry> e;
  for (auto& [n, t] : all) e.push_back({n, t.shape, t.data.data()});
  write_safetensors(dir + "/model.safetensors", e, {{"format", "pt"}});
}

std::string replace_root(const std::string& n, const std::string& from, const std::string& to) {
  return n.rfind(from, 0) == 0 ? to + n.substr(from.size()) : n;
}

TEST(HfConvertNemotronH, RoundTripIsBitIdenticalUnderEitherRoot) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = tiny_hybrid();
  c.mamba_dt_limit_min = 1e-3;  // time_step_limit [0.001, 0.5] both ways
  c.mamba_dt_limit_max = 0.5;
  EXPECT_EQ(hf_family_for(c, "auto"), HfFamily::nemotron_h);
  DecoderLM a(c, grid, 11);
  const std::vector<float> want = logits(a);
  const std::string dir = fresh_dir("nemotron_h");
  export_hf(c, tensors_of(a), dir, {});
  // Written under backbone.; transformers' port names the body model., and old files call the
  // embedding backbone.embedding.
  for (const char* root : {"backbone.", "model.", "embedding"}) {
    SCOPED_TRACE(root);
    if (std::string(root) == "model.")
      rewrite_names(dir, [](const std::string& n) { return replace_root(n, "backbone.", "model."); });
    if (std::string(root) == "embedding")
      rewrite_names(dir, [](const std::string& n) {
        return n == "model.embeddings.weight" ? "backbone.embedding.weight" : replace_root(n, "model.", "backbone.");
      });
    HfImport imp = import_hf(dir);
    EXPECT_EQ(imp.family, HfFamily::nemotron_h);
    EXPECT_EQ(config_to_json(imp.model), config_to_json(c)) << "config.json does not round-trip";
    DecoderLM b(imp.model, grid, 999);
    ASSERT_EQ(imp.tensors.size(), b.params().params().size());
    for (Param& p : b.params().params()) {
      const HostTensor& t = imp.tensors.at(p.name);
      ASSERT_EQ(t.shape, p.global_shape.vec()) << p.name;
      std::copy(t.data.begin(), t.data.end(), p.value);
    }
    ASSERT_EQ(a.params().numel(), b.params().numel());
    EXPECT_EQ(0, std::memcmp(a.params().values(), b.params().values(), sizeof(float) * a.params().numel()));
    EXPECT_EQ(logits(b), want);
  }
  fs::remove_all(dir);
}

// The full-size presets: their config.json describes the same model (8B's head_dim 128 is
// d_model / num_heads, which fivefold spells 0); the MoE hybrid is refused.
TEST(HfConvertNemotronH, PresetsRoundTripThroughConfigJson) {
  for (const char* name : {"nemotron-h-small", "nemotron-h-8b", "nemotron-h-4b"}) {
    SCOPED_TRACE(name);
    ModelConfig c = model_preset(name);
    const std::string dir = fresh_dir(std::string("preset_") + name);
    std::ofstream(dir + "/config.json") << hf_config_text(c, hf_family_for(c, "auto"), true);
    ModelConfig back = import_hf_config(dir);
    if (c.head_dim * c.num_heads == c.d_model) c.head_dim = 0;
    EXPECT_EQ(config_to_json(back), config_to_json(c));
    EXPECT_EQ(count_parameters(back), count_parameters(model_preset(name)));
    fs::remove_all(dir);
  }
  const std::string msg = error_of([] { hf_family_for(model_preset("nemotron-h-moe-small"), "auto"); });
  EXPECT_NE(msg.find("MoE layers ('E')"), std::string::npos) << msg;
}

TEST(HfConvertNemotronH, WritesHfNamesShapesAndSegmentOrder) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const ModelConfig c = tiny_hybrid();
  DecoderLM m(c, grid, 1);
  TensorMap t = tensors_of(m);
  // Each in_proj / conv part of layer 2 (a Mamba layer) filled with its own known values.
  const std::string p = "model.layers.2.mixer.";
  const char* in_parts[] = {"in_proj_z", "in_proj_x", "in_proj_B", "in_proj_C", "in_proj_dt"};
  const char* conv_parts[] = {"conv1d_x", "conv1d_B", "conv1d_C"};
  auto fill = [&](const std::string& name, float base) {
    std::vector<float>& v = t.at(name).data;
    for (size_t i = 0; i < v.size(); ++i) v[i] = base + static_cast<float>(i);
  };
  for (int k = 0; k < 5; ++k) fill(p + in_parts[k] + ".weight", 1000.0f * (k + 1));
  for (int k = 0; k < 3; ++k) {
    fill(p + conv_parts[k] + ".weight", 10000.0f * (k + 1));
    fill(p + conv_parts[k] + ".bias", -1000.0f * (k + 1));
  }
  const std::string dir = fresh_dir("nemotron_h_names");
  export_hf(c, t, dir, {});
  SafetensorsFile f(dir + "/model.safetensors");
  EXPECT_EQ(f.names().size(), t.size() - 2 * (11 - 3));  // per Mamba layer 5 in_proj and 3 + 3 conv parts fused into 3
  const int64_t D = 32, di = 12, gn = 10, H = 4, Ch = di + 2 * gn, K = 4;
  for (const char* n : {"backbone.embeddings.weight", "backbone.layers.0.norm.weight", "backbone.layers.1.norm.weight",
                        "backbone.layers.1.mixer.up_proj.weight", "backbone.layers.3.mixer.q_proj.weight",
                        "backbone.layers.3.mixer.o_proj.weight", "backbone.layers.4.mixer.down_proj.weight",
                        "backbone.layers.2.mixer.dt_bias", "backbone.layers.2.mixer.A_log", "backbone.layers.2.mixer.D",
                        "backbone.layers.2.mixer.norm.weight", "backbone.layers.2.mixer.out_proj.weight",
                        "backbone.norm_f.weight", "lm_head.weight"})
    EXPECT_TRUE(f.contains(n)) << n;
  EXPECT_FALSE(f.contains("backbone.layers.1.mixer.gate_proj.weight"));
  EXPECT_EQ(f.info("backbone.layers.2.mixer.in_proj.weight").shape, (std::vector<int64_t>{2 * di + 2 * gn + H, D}));
  EXPECT_EQ(f.info("backbone.layers.2.mixer.conv1d.weight").shape, (std::vector<int64_t>{Ch, 1, K}));
  EXPECT_EQ(f.info("backbone.layers.2.mixer.conv1d.bias").shape, (std::vector<int64_t>{Ch}));
  EXPECT_EQ(f.info("backbone.layers.2.mixer.out_proj.weight").shape, (std::vector<int64_t>{D, di}));
  // in_proj rows: z [0, di), x [di, 2 di), B [2 di, 2 di + G N), C, then dt; conv channels x | B | C.
  const HostTensor in = f.read_any("backbone.layers.2.mixer.in_proj.weight");
  const int64_t in_rows[] = {di, di, gn, gn, H};
  for (int k = 0, r0 = 0; k < 5; r0 += static_cast<int>(in_rows[k++]))
    for (int64_t r = 0; r < in_rows[k]; ++r)
      for (int64_t col = 0; col < D; ++col)
        ASSERT_EQ(in.data[static_cast<size_t>((r0 + r) * D + col)], 1000.0f * (k + 1) + static_cast<float>(r * D + col))
            << in_parts[k] << " row " << r;
  const HostTensor conv = f.read_any("backbone.layers.2.mixer.conv1d.weight"), bias = f.read_any("backbone.layers.2.mixer.conv1d.bias");
  const int64_t conv_rows[] = {di, gn, gn};
  for (int k = 0, r0 = 0; k < 3; r0 += static_cast<int>(conv_rows[k++]))
    for (int64_t r = 0; r < conv_rows[k]; ++r) {
      EXPECT_EQ(bias.data[static_cast<size_t>(r0 + r)], -1000.0f * (k + 1) + static_cast<float>(r));
      for (int64_t j = 0; j < K; ++j)
        ASSERT_EQ(conv.data[static_cast<size_t>((r0 + r) * K + j)], 10000.0f * (k + 1) + static_cast<float>(r * K + j))
            << conv_parts[k] << " channel " << r;
    }
  // config.json: the keys transformers' NemotronH reads; time_step_limit's inf as Python writes it.
  std::ifstream cf(dir + "/config.json");
  const std::string text((std::istreambuf_iterator<char>(cf)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("Infinity"), std::string::npos) << text;
  const HfImport imp = import_hf(dir);
  EXPECT_EQ(imp.model.mamba_dt_limit_max, 0.0);
  auto cj = nlohmann::json::parse(std::string(text).replace(text.find("Infinity"), 8, "1e308"));
  EXPECT_EQ(cj["architectures"][0], "NemotronHForCausalLM");
  EXPECT_EQ(cj["model_type"], "nemotron_h");
  EXPECT_EQ(cj["hybrid_override_pattern"], "M-M*-");
  EXPECT_EQ(cj["num_hidden_layers"], 5);
  EXPECT_EQ(cj["mamba_num_heads"], 4);
  EXPECT_EQ(cj["mamba_head_dim"], 3);
  EXPECT_EQ(cj["n_groups"], 2);
  EXPECT_EQ(cj["ssm_state_size"], 5);
  EXPECT_EQ(cj["conv_kernel"], 4);
  EXPECT_EQ(cj["head_dim"], 8);
  EXPECT_EQ(cj["intermediate_size"], 48);
  EXPECT_EQ(cj["mlp_hidden_act"], "relu2");
  EXPECT_EQ(cj["mamba_hidden_act"], "silu");
  EXPECT_EQ(cj["use_conv_bias"], true);
  EXPECT_EQ(cj["mamba_proj_bias"], false);
  EXPECT_EQ(cj["use_bias"], false);
  EXPECT_EQ(cj["time_step_limit"][0], 0.0);
  EXPECT_EQ(cj["layer_norm_epsilon"], c.norm_eps);
  fs::remove_all(dir);
}

TEST(HfConvertNemotronH, WhatFivefoldCannotRepresentIsOneClearError) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  ModelConfig c = tiny_hybrid();
  DecoderLM m(c, grid, 1);
  const std::string dir = fresh_dir("nemotron_h_errors");
  export_hf(c, tensors_of(m), dir, {});
  const std::string cpath = dir + "/config.json";
  std::ifstream cf(cpath);
  const std::string original((std::istreambuf_iterator<char>(cf)), std::istreambuf_iterator<char>());
  auto with = [&](const std::string& key, const std::string& value) {  // config.json with one key replaced
    std::string text = original;
    const size_t at = text.find("\"" + key + "\":");
    if (at == std::string::npos) {
      text.insert(1, "\"" + key + "\": " + value + ",");
    } else {
      const size_t from = text.find(':', at) + 1;
      const size_t to = text[from + 1] == '[' ? text.find(']', from) + 1 : text.find_first_of(",\n", from);
      text.replace(from, to - from, " " + value);
    }
    std::ofstream(cpath) << text;
  };
  auto expect = [&](const std::vector<std::string>& needles) {
    const std::string msg = error_of([&] { import_hf(dir); });
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  };
  const std::vector<std::pair<std::pair<std::string, std::string>, std::vector<std::string>>> cases = {
      {{"mamba_proj_bias", "true"}, {"mamba_proj_bias = true"}},
      {{"use_bias", "true"}, {"use_bias = true"}},
      {{"use_conv_bias", "false"}, {"use_conv_bias = false"}},
      {{"mlp_hidden_act", "\"gelu\""}, {"mlp_hidden_act = \"gelu\"", "relu2"}},
      {{"mamba_hidden_act", "\"relu\""}, {"mamba_hidden_act = \"relu\""}},
      {{"hybrid_override_pattern", "\"M-E*-\""}, {"MoE layer ('E') at layer 2"}},
      {{"hybrid_override_pattern", "\"M-X*-\""}, {"layer 2 is 'X'"}},
      {{"num_hidden_layers", "6"}, {"num_hidden_layers = 6", "5 layers"}},
      {{"time_step_limit", "[0.01, Infinity]"}, {"time_step_limit = [0.01, inf]"}},
      {{"time_step_limit", "[0.5]"}, {"time_step_limit", "pair of numbers"}},
      {{"mamba_num_heads", "\"four\""}, {"'mamba_num_heads' is missing or not a number"}},
      {{"mamba_head_dim", "2.5"}, {"'mamba_head_dim' = 2.5", "not a whole number"}},
      {{"n_groups", "3"}, {"mamba_num_heads = 4 is not divisible by mamba_groups = 3"}},
      {{"sliding_window", "4"}, {"sliding_window = 4"}},
      {{"model_type", "\"nemotron_x\""}, {"model_type \"nemotron_x\""}},
  };
  for (const auto& [kv, needles] : cases) {
    SCOPED_TRACE(kv.first + " = " + kv.second);
    with(kv.first, kv.second);
    std::vector<std::string> all = needles;
    all.push_back(cpath);
    expect(all);
  }
  // Other spellings HF reads: layers_block_type (transformers 5) and the older mamba_* keys.
  std::string text = original;
  text.replace(text.find("\"hybrid_override_pattern\""), std::string("\"hybrid_override_pattern\": \"M-M*-\"").size(),
               "\"layers_block_type\": [\"mamba\", \"mlp\", \"linear_attention\", \"full_attention\", \"mlp\"]");
  text.replace(text.find("\"n_groups\""), 8 + 2, "\"mamba_n_groups\"");
  std::ofstream(cpath) << text;
  ModelConfig spelled = import_hf(dir).model;
  EXPECT_EQ(config_to_json(spelled), config_to_json(c));
  std::ofstream(cpath) << original;
  EXPECT_NO_THROW(import_hf(dir));

  // Tensors: parts of the wrong size, a conv weight without HF's unit axis, two roots at once.
  auto edit = [&](const std::string& name, const std::vector<int64_t>& shape) {
    std::map<std::string, HostTensor> all;
    {
      SafetensorsFile f(dir + "/model.safetensors");
      for (const auto& n : f.names()) all[n] = f.read_any(n);
    }
    HostTensor& t = all.at(name);
    t.data.resize(static_cast<size_t>(std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<>())));
    t.shape = shape;
    std::vector<SafetensorsEntry> e;
    for (auto& [n, h] : all) e.push_back({n, h.shape, h.data.data()});
    write_safetensors(dir + "/model.safetensors", e, {{"format", "pt"}});
  };
  edit("backbone.layers.0.mixer.in_proj.weight", {50, 32});
  expect({"backbone.layers.0.mixer.in_proj.weight", "[50, 32]", "12 + 12 + 10 + 10 + 4 = 48", "in_proj_x"});
  edit("backbone.layers.0.mixer.in_proj.weight", {48, 32});
  edit("backbone.layers.0.mixer.conv1d.weight", {32, 4});
  expect({"backbone.layers.0.mixer.conv1d.weight", "unit axis"});
  edit("backbone.layers.0.mixer.conv1d.weight", {32, 1, 4});
  EXPECT_NO_THROW(import_hf(dir));
  rewrite_names(dir, [](const std::string& n) { return n == "backbone.norm_f.weight" ? "model.norm_f.weight" : n; });
  expect({"'backbone.", "'model.", "one root"});
  rewrite_names(dir, [](const std::string& n) { return replace_root(n, "backbone.", "model."); });
  rewrite_names(dir, [](const std::string& n) { return n == "model.layers.1.mixer.up_proj.weight" ? "" : n; });
  expect({"tensor 'model.layers.1.mixer.up_proj.weight' is missing"});
  fs::remove_all(dir);

  // Export: the fields the layout cannot express, each named.
  ModelConfig bad = c;
  bad.activation = Activation::swiglu;
  bad.position_embedding = PositionEmbedding::rope;
  bad.tie_embeddings = true;
  bad.norm = NormKind::layernorm1p;
  bad.layer_pattern = "M-ME*-";
  bad.num_experts = 4;
  std::string msg = error_of([&] { hf_family_for(bad, "auto"); });
  for (const char* n : {"nemotron_h", "model.activation", "model.position_embedding", "model.tie_embeddings", "model.norm",
                        "MoE layers ('E')"})
    EXPECT_NE(msg.find(n), std::string::npos) << n << " not in: " << msg;
  msg = error_of([&] { hf_family_for(c, "llama"); });
  EXPECT_NE(msg.find("Mamba2 layers ('M')"), std::string::npos) << msg;
  EXPECT_EQ(hf_family_for(model_preset("llama-small"), "auto"), HfFamily::llama);
}

}  // namespace
}  // namespace ff
