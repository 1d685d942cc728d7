#include "models/hf_config.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "models/layer_kind.h"

namespace ff {

using nlohmann::json;

namespace {

bool has_layer(const ModelConfig& c, char kind) { return c.pattern().find(kind) != std::string::npos; }

int64_t blocks_of(const ModelConfig& c) {
  const std::string p = c.pattern();
  return std::count(p.begin(), p.end(), '*');
}

// --- Non-finite numbers. Python's json module writes inf and nan as the bare words Infinity,
// -Infinity and NaN; JSON (and nlohmann) has no such numbers. Reading quotes them into sentinel
// strings and turns those into numbers after parsing; writing does the reverse.
constexpr const char* kNonFinite = "__fivefold_non_finite__:";

std::string quote_non_finite(const std::string& s) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char ch = s[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < s.size()) out += s[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    const char* word = nullptr;
    for (const char* w : {"-Infinity", "Infinity", "NaN"})
      if (s.compare(i, std::strlen(w), w) == 0) word = w;
    if (!word) {
      out += ch;
      continue;
    }
    out += std::string("\"") + kNonFinite + word + "\"";
    i += std::strlen(word) - 1;
  }
  return out;
}

void restore_non_finite(json& v) {
  if (v.is_structured()) {
    for (json& e : v) restore_non_finite(e);
  } else if (v.is_string() && v.get_ref<const std::string&>().rfind(kNonFinite, 0) == 0) {
    const std::string word = v.get<std::string>().substr(std::strlen(kNonFinite));
    const double inf = std::numeric_limits<double>::infinity();
    v = word == "NaN" ? std::numeric_limits<double>::quiet_NaN() : word == "Infinity" ? inf : -inf;
  }
}

// A number for config.json: itself, or the sentinel hf_config_text turns into Infinity.
json number(double x) { return std::isinf(x) ? json(std::string(kNonFinite) + (x > 0 ? "Infinity" : "-Infinity")) : json(x); }

// --- Reading: typed look-ups whose errors name the key and the file.
struct Keys {
  const json& j;
  const std::string& path;

  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  // The first of a key's spellings (current, then older) that the file has; else the first.
  const char* name(std::initializer_list<const char*> spellings) const {
    for (const char* k : spellings)
      if (has(k)) return k;
    return *spellings.begin();
  }
  // A size: a whole number in [0, 2^31 - 1] (token ids and the kernels' row indices are int32),
  // never truncated (64.5 -> 64) or wrapped (1e30 -> negative).
  int64_t whole(const char* k, const json& v) const {
    const double d = v.get<double>();
    FF_CHECK(std::isfinite(d) && d == std::floor(d) && d >= 0 && d <= 2147483647.0,
             "'%s': key '%s' = %s is not a whole number between 0 and 2147483647", path.c_str(), k, v.dump().c_str());
    return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(d);
  }
  int64_t need(const char* k) const {
    FF_CHECK(j.contains(k) && j[k].is_number(), "'%s': key '%s' is missing or not a number", path.c_str(), k);
    return whole(k, j[k]);
  }
  double num(const char* k, double def) const { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : def; }
  int64_t size_or(const char* k, int64_t def) const { return j.contains(k) && j[k].is_number() ? whole(k, j[k]) : def; }
  bool flag(const char* k, bool def) const { return j.contains(k) && j[k].is_boolean() ? j[k].get<bool>() : def; }
  std::string text(const char* k, const char* def) const {
    if (!has(k)) return def;
    FF_CHECK(j[k].is_string(), "'%s': key '%s' = %s is not a string", path.c_str(), k, j[k].dump().c_str());
    return j[k].get<std::string>();
  }
};

// --- Llama, Mixtral, Qwen2-MoE.

json llama_like_json(const ModelConfig& c, const HfTable& t, bool bf16) {
  json j = {{"architectures", {t.architecture}}, {"model_type", t.model_type},
            {"hidden_size", c.d_model}, {"num_hidden_layers", blocks_of(c)},
            {"num_attention_heads", c.num_heads}, {"num_key_value_heads", c.num_kv_heads},
            {"head_dim", c.kv_channels()}, {"vocab_size", c.vocab_size}, {"rms_norm_eps", c.norm_eps},
            {"rope_theta", c.rope_base}, {"max_position_embeddings", c.seq_len},
            {"tie_word_embeddings", c.tie_embeddings}, {"hidden_act", "silu"}, {"initializer_range", c.init_std},
            {"attention_dropout", 0.0}, {"torch_dtype", bf16 ? "bfloat16" : "float32"}};
  switch (t.family) {
    case HfFamily::llama:
      j["intermediate_size"] = c.ffn_hidden;
      j["attention_bias"] = false;
      j["mlp_bias"] = false;
      break;
    case HfFamily::mixtral:
      j["intermediate_size"] = c.moe_ffn_hidden;
      j["num_local_experts"] = c.num_experts;
      j["num_experts_per_tok"] = c.moe_top_k;
      j["router_aux_loss_coef"] = c.moe_aux_loss_coeff;
      j["output_router_logits"] = false;
      break;
    case HfFamily::qwen2_moe:
      j["intermediate_size"] = c.ffn_hidden;
      j["moe_intermediate_size"] = c.moe_ffn_hidden;
      j["shared_expert_intermediate_size"] = c.moe_shared_expert_hidden;
      j["num_experts"] = c.num_experts;
      j["num_experts_per_tok"] = c.moe_top_k;
      j["norm_topk_prob"] = c.moe_router_norm_topk_prob;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = json::array();
      j["router_aux_loss_coef"] = c.moe_aux_loss_coeff;
      j["use_sliding_window"] = false;
      break;
    case HfFamily::nemotron_h: break;
  }
  return j;
}

// Every key the family needs, with HF's defaults where HF has them.
ModelConfig llama_like_model(const Keys& k, HfFamily f) {
  const std::string& path = k.path;
  const std::string act = k.text("hidden_act", "silu");
  FF_CHECK(act == "silu", "'%s': hidden_act = \"%s\"; fivefold imports SwiGLU (silu) models", path.c_str(), act.c_str());
  FF_CHECK(!k.has("rope_scaling"), "'%s': rope_scaling = %s is not supported; fivefold uses plain RoPE", path.c_str(),
           k.j.value("rope_scaling", json()).dump().c_str());
  for (const char* key : {"attention_bias", "mlp_bias"})
    FF_CHECK(!k.flag(key, false), "'%s': %s = true; fivefold's Llama layers have no biases", path.c_str(), key);
  ModelConfig c;
  c.layer_pattern = "";
  c.d_model = k.need("hidden_size");
  c.num_layers = k.need("num_hidden_layers");
  c.num_heads = k.need("num_attention_heads");
  c.num_kv_heads = k.size_or("num_key_value_heads", c.num_heads);
  c.vocab_size = k.need("vocab_size");
  c.head_dim = k.size_or("head_dim", 0);
  if (c.num_heads > 0 && c.head_dim == c.d_model / c.num_heads && c.d_model % c.num_heads == 0) c.head_dim = 0;
  c.norm_eps = k.num("rms_norm_eps", f == HfFamily::mixtral ? 1e-5 : 1e-6);
  c.rope_base = k.num("rope_theta", f == HfFamily::mixtral ? 1e6 : 10000.0);
  c.seq_len = k.size_or("max_position_embeddings", 4096);
  c.tie_embeddings = k.flag("tie_word_embeddings", false);
  c.init_std = k.num("initializer_range", 0.02);
  c.activation = Activation::swiglu;
  c.norm = NormKind::rmsnorm;
  c.position_embedding = PositionEmbedding::rope;
  c.rotary_percent = 1.0;
  c.moe_aux_loss_coeff = k.num("router_aux_loss_coef", 0.01);
  c.moe_router_score = cpu::RouterScore::softmax;
  c.moe_router_topk_scaling = 1.0;
  c.moe_shared_expert_hidden = 0;
  c.moe_shared_expert_gate = false;
  switch (f) {
    case HfFamily::llama:
      c.num_experts = 0;
      c.ffn_hidden = k.need("intermediate_size");
      break;
    case HfFamily::mixtral:  // softmax over all, top-k, renormalise == top-k then softmax
      c.num_experts = k.need("num_local_experts");
      c.moe_top_k = k.need("num_experts_per_tok");
      c.moe_ffn_hidden = k.need("intermediate_size");
      c.moe_router_pre_softmax = false;
      c.moe_router_norm_topk_prob = false;
      break;
    case HfFamily::qwen2_moe:
      FF_CHECK(k.num("decoder_sparse_step", 1) == 1 && k.j.value("mlp_only_layers", json::array()).empty(),
               "'%s': decoder_sparse_step != 1 or mlp_only_layers non-empty: fivefold imports Qwen2-MoE models whose "
               "every block is MoE", path.c_str());
      c.num_experts = k.need("num_experts");
      c.moe_top_k = k.need("num_experts_per_tok");
      c.moe_ffn_hidden = k.need("moe_intermediate_size");
      c.ffn_hidden = k.size_or("intermediate_size", c.ffn_hidden);
      c.moe_shared_expert_hidden = k.need("shared_expert_intermediate_size");
      c.moe_shared_expert_gate = c.moe_shared_expert_hidden > 0;
      c.moe_router_pre_softmax = true;
      c.moe_router_norm_topk_prob = k.flag("norm_topk_prob", false);
      break;
    case HfFamily::nemotron_h: break;
  }
  return c;
}

void llama_like_problems(const ModelConfig& c, HfFamily f, std::vector<std::string>& e) {
  const char* name = hf_family_name(f);
  const std::string pattern = c.pattern();
  std::string want;
  for (int64_t i = 0; i < blocks_of(c); ++i) want += f == HfFamily::llama ? "*-" : "*E";
  if (pattern != want)
    e.push_back(strprintf("model.layer_pattern = %s: the %s layout needs %s blocks of attention + %s", pattern.c_str(),
                          name, std::to_string(blocks_of(c)).c_str(), f == HfFamily::llama ? "MLP (\"*-\")" : "MoE (\"*E\")"));
  if (c.activation != Activation::swiglu) e.push_back("model.activation must be swiglu");
  if (c.norm != NormKind::rmsnorm) e.push_back("model.norm must be rmsnorm");
  if (c.position_embedding != PositionEmbedding::rope || c.rotary_percent != 1.0)
    e.push_back("model.position_embedding must be rope with rotary_percent = 1");
  if (f != HfFamily::llama) {
    if (c.moe_router_score != cpu::RouterScore::softmax) e.push_back("model.moe_router_score must be softmax");
    if (c.moe_expert_bias) e.push_back("model.moe_expert_bias must be false (HF has no expert-bias buffer)");
    if (c.moe_router_topk_scaling != 1.0) e.push_back("model.moe_router_topk_scaling must be 1");
    if (c.moe_router_groups != 0) e.push_back("model.moe_router_groups must be 0 (the family routes without groups)");
  }
  if (f == HfFamily::mixtral) {
    if (c.moe_router_pre_softmax && !c.moe_router_norm_topk_prob)
      e.push_back("model.moe_router_pre_softmax = true needs moe_router_norm_topk_prob = true (Mixtral renormalises)");
    if (c.moe_shared_expert_hidden > 0) e.push_back("model.moe_shared_expert_hidden must be 0 (Mixtral has none)");
  }
  if (f == HfFamily::qwen2_moe) {
    if (!c.moe_router_pre_softmax) e.push_back("model.moe_router_pre_softmax must be true (Qwen2-MoE: softmax, then top-k)");
    if (c.moe_shared_expert_hidden == 0 || !c.moe_shared_expert_gate)
      e.push_back("model.moe_shared_expert_hidden > 0 with moe_shared_expert_gate = true (Qwen2-MoE always has both)");
    if (c.head_dim != 0 && c.head_dim * c.num_heads != c.d_model)
      e.push_back("model.head_dim must be d_model / num_heads (Qwen2-MoE derives it)");
  }
}

// --- Nemotron-H (transformers' configuration_nemotron_h.py and NVIDIA's remote code). Older
// configs spell some keys mamba_* (mamba_n_groups, mamba_d_conv, ...); both spellings are read.

json nemotron_h_json(const ModelConfig& c, bool bf16) {
  const std::string p = c.pattern();
  const double inf = std::numeric_limits<double>::infinity();
  // fivefold clamps Δ to [min, max] only when max > 0; max = 0 clamps nothing: [0, inf].
  const json limit = c.mamba_dt_limit_max > 0 ? json{c.mamba_dt_limit_min, c.mamba_dt_limit_max} : json{0.0, number(inf)};
  return {{"architectures", {"NemotronHForCausalLM"}}, {"model_type", "nemotron_h"},
          {"vocab_size", c.vocab_size}, {"hidden_size", c.d_model},
          {"num_hidden_layers", p.size()}, {"hybrid_override_pattern", p},
          {"num_attention_heads", c.num_heads}, {"num_key_value_heads", c.num_kv_heads},
          {"head_dim", c.kv_channels()}, {"attention_head_dim", c.kv_channels()},  // newer, older spelling
          {"intermediate_size", c.ffn_hidden}, {"mlp_hidden_act", "relu2"},
          {"mamba_num_heads", c.mamba_num_heads}, {"mamba_head_dim", c.mamba_head_dim},
          {"n_groups", c.mamba_groups}, {"ssm_state_size", c.mamba_state}, {"conv_kernel", c.mamba_conv_kernel},
          {"chunk_size", c.mamba_chunk}, {"mamba_hidden_act", "silu"},
          {"time_step_min", c.mamba_dt_min}, {"time_step_max", c.mamba_dt_max},
          {"time_step_floor", c.mamba_dt_init_floor}, {"time_step_limit", limit},
          {"use_conv_bias", true}, {"mamba_proj_bias", false}, {"use_bias", false},
          {"attention_bias", false}, {"mlp_bias", false},
          {"layer_norm_epsilon", c.norm_eps}, {"max_position_embeddings", c.seq_len},
          {"tie_word_embeddings", c.tie_embeddings}, {"initializer_range", c.init_std},
          {"residual_in_fp32", true},  // fivefold's residual stream is fp32
          {"attention_dropout", 0.0}, {"hidden_dropout", 0.0}, {"torch_dtype", bf16 ? "bfloat16" : "float32"}};
}

// The layer pattern: hybrid_override_pattern, or (transformers 5) layers_block_type, a list.
std::string nemotron_h_pattern(const Keys& k) {
  const std::string& path = k.path;
  std::string p;
  const char* key = k.has("hybrid_override_pattern") ? "hybrid_override_pattern" : "layers_block_type";
  if (k.has("hybrid_override_pattern")) {
    FF_CHECK(k.j[key].is_string(), "'%s': key '%s' is not a string", path.c_str(), key);
    p = k.j[key].get<std::string>();
  } else {
    FF_CHECK(k.has(key) && k.j[key].is_array(), "'%s': neither key 'hybrid_override_pattern' (a string) nor "
             "'layers_block_type' (a list) gives the layers", path.c_str());
    for (const json& t : k.j[key]) {
      const std::string s = t.is_string() ? t.get<std::string>() : t.dump();
      p += s == "mamba" || s == "linear_attention" ? 'M' : s == "attention" || s == "full_attention" ? '*'
           : s == "mlp" ? '-' : s == "moe" ? 'E' : '?';
      FF_CHECK(p.back() != '?', "'%s': key '%s' names layer type %s, which fivefold does not know (it reads mamba or "
               "linear_attention, attention or full_attention, mlp)", path.c_str(), key, s.c_str());
    }
  }
  FF_CHECK(!p.empty(), "'%s': key '%s' gives no layers", path.c_str(), key);
  for (size_t i = 0; i < p.size(); ++i) {
    FF_CHECK(p[i] != 'E', "'%s': key '%s' has a MoE layer ('E') at layer %zu; fivefold does not import NemotronH MoE "
             "layers (sigmoid routing with a score-correction bias over expert groups, shared experts)", path.c_str(),
             key, i);
    FF_CHECK(p[i] == 'M' || p[i] == '*' || p[i] == '-', "'%s': key '%s' = \"%s\": layer %zu is '%c', which fivefold does "
             "not know (M Mamba2, * attention, - MLP)", path.c_str(), key, p.c_str(), i, p[i]);
  }
  if (k.has("num_hidden_layers"))
    FF_CHECK(k.need("num_hidden_layers") == static_cast<int64_t>(p.size()), "'%s': num_hidden_layers = %lld but key "
             "'%s' has %zu layers", path.c_str(), (long long)k.need("num_hidden_layers"), key, p.size());
  return p;
}

ModelConfig nemotron_h_model(const Keys& k) {
  const std::string& path = k.path;
  auto must_be = [&](const char* key, const char* def, const char* want, const char* why) {
    const std::string v = k.text(key, def);
    FF_CHECK(v == want, "'%s': %s = \"%s\"; %s", path.c_str(), key, v.c_str(), why);
  };
  must_be("mlp_hidden_act", "relu2", "relu2", "fivefold's Nemotron-H MLPs are squared ReLU (relu2)");
  must_be("mamba_hidden_act", "silu", "silu", "fivefold's Mamba2 convolution is followed by SiLU");
  const char* conv_bias = k.name({"use_conv_bias", "mamba_conv_bias"});
  FF_CHECK(k.flag(conv_bias, true), "'%s': %s = false; fivefold's Mamba2 convolution always has a bias", path.c_str(),
           conv_bias);
  for (const char* key : {"mamba_proj_bias", "use_bias", "attention_bias", "mlp_bias"})
    FF_CHECK(!k.flag(key, false), "'%s': %s = true; fivefold's Nemotron-H projections have no biases", path.c_str(), key);
  FF_CHECK(!k.has("sliding_window"), "'%s': sliding_window = %s; fivefold's attention is global", path.c_str(),
           k.j.value("sliding_window", json()).dump().c_str());

  ModelConfig c;
  c.layer_pattern = nemotron_h_pattern(k);
  const bool mamba = c.layer_pattern.find('M') != std::string::npos;
  c.d_model = k.need("hidden_size");
  c.vocab_size = k.need("vocab_size");
  c.num_heads = k.need("num_attention_heads");
  c.num_kv_heads = k.size_or("num_key_value_heads", c.num_heads);
  c.head_dim = k.size_or(k.name({"head_dim", "attention_head_dim"}), 128);  // HF's default
  if (c.num_heads > 0 && c.head_dim == c.d_model / c.num_heads && c.d_model % c.num_heads == 0) c.head_dim = 0;
  c.ffn_hidden = c.layer_pattern.find('-') != std::string::npos ? k.need("intermediate_size")
                                                                : k.size_or("intermediate_size", c.ffn_hidden);
  c.activation = Activation::squared_relu;
  c.norm = NormKind::rmsnorm;
  c.norm_eps = k.num("layer_norm_epsilon", 1e-5);
  c.position_embedding = PositionEmbedding::none;
  c.seq_len = k.size_or("max_position_embeddings", 4096);
  c.tie_embeddings = k.flag("tie_word_embeddings", false);
  c.init_std = k.num("initializer_range", 0.02);
  c.num_experts = 0;
  auto mamba_size = [&](const char* key, int64_t def) { return mamba ? k.need(key) : k.size_or(key, def); };
  c.mamba_num_heads = mamba_size("mamba_num_heads", c.mamba_num_heads);
  c.mamba_head_dim = mamba_size("mamba_head_dim", c.mamba_head_dim);
  c.mamba_groups = mamba_size(k.name({"n_groups", "mamba_n_groups"}), c.mamba_groups);
  c.mamba_state = mamba_size("ssm_state_size", c.mamba_state);
  c.mamba_conv_kernel = k.size_or(k.name({"conv_kernel", "mamba_d_conv"}), 4);
  c.mamba_chunk = k.size_or(k.name({"chunk_size", "mamba_chunk_size"}), 128);
  c.mamba_dt_min = k.num(k.name({"time_step_min", "mamba_dt_min"}), 1e-3);
  c.mamba_dt_max = k.num(k.name({"time_step_max", "mamba_dt_max"}), 0.1);
  c.mamba_dt_init_floor = k.num(k.name({"time_step_floor", "mamba_dt_init_floor"}), 1e-4);
  // time_step_limit [lo, hi]: Δ clamped to it; [0, inf] (HF's default) clamps nothing.
  const char* limit = k.name({"time_step_limit", "mamba_dt_limit"});
  if (k.has(limit)) {
    const json& v = k.j[limit];
    FF_CHECK(v.is_array() && v.size() == 2 && v[0].is_number() && v[1].is_number(),
             "'%s': %s = %s is not a pair of numbers [min, max]", path.c_str(), limit, v.dump().c_str());
    const double lo = v[0].get<double>(), hi = v[1].get<double>();
    if (std::isinf(hi) && hi > 0) {
      FF_CHECK(lo == 0, "'%s': %s = [%g, inf]: fivefold clamps Δ to [min, max] with a finite max (model.mamba_dt_limit_max "
               "= 0 clamps nothing); a lower bound alone is not expressible", path.c_str(), limit, lo);
    } else {
      FF_CHECK(std::isfinite(lo) && std::isfinite(hi) && hi > 0, "'%s': %s = [%g, %g]: need 0 <= min < max, max finite "
               "or inf", path.c_str(), limit, lo, hi);
      c.mamba_dt_limit_min = lo;
      c.mamba_dt_limit_max = hi;
    }
  }
  return c;
}

void nemotron_h_problems(const ModelConfig& c, std::vector<std::string>& e) {
  if (has_layer(c, '-') && c.activation != Activation::squared_relu)
    e.push_back("model.activation must be squared_relu (Nemotron-H MLPs are relu2, not gated)");
  if (c.norm != NormKind::rmsnorm) e.push_back("model.norm must be rmsnorm");
  if (has_layer(c, '*') && c.position_embedding != PositionEmbedding::none)
    e.push_back("model.position_embedding must be none (Nemotron-H attention has no position embedding)");
  if (c.tie_embeddings)
    e.push_back("model.tie_embeddings must be false (transformers' NemotronH does not tie lm_head to the embeddings)");
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  FF_CHECK(f.good(), "'%s' is missing: a Hugging Face model folder has config.json", path.c_str());
  std::stringstream text;
  text << f.rdbuf();
  json j;
  try {
    j = json::parse(quote_non_finite(text.str()));
  } catch (const std::exception& e) {
    FF_FAIL("'%s' is not valid JSON: %s", path.c_str(), e.what());
  }
  restore_non_finite(j);
  FF_CHECK(j.is_object(), "'%s' is not a JSON object", path.c_str());
  return j;
}

}  // namespace

HfFamily hf_family_for(const ModelConfig& c, const std::string& requested) {
  const bool moe = has_layer(c, 'E');
  HfFamily f;
  if (requested == "auto")
    f = has_layer(c, 'M') ? HfFamily::nemotron_h
        : !moe            ? HfFamily::llama
        : c.moe_shared_expert_hidden > 0 ? HfFamily::qwen2_moe
                                         : HfFamily::mixtral;
  else
    FF_CHECK(hf_family_from_name(requested, f), "--family %s: choose llama, mixtral, qwen2_moe, nemotron_h or auto",
             requested.c_str());
  const char* name = hf_family_name(f);
  std::vector<std::string> e;
  for (char k : std::string("*-EM"))
    if (const LayerKindInfo* kind = layer_kind_of(k); has_layer(c, k) && kind->hf_rules(f, c).empty())
      e.push_back(strprintf("model.layer_pattern has %s layers ('%c'), which fivefold does not write in the %s layout",
                            kind->name, k, name));
  if (f == HfFamily::nemotron_h) nemotron_h_problems(c, e);
  else llama_like_problems(c, f, e);
  if (!e.empty()) {
    const std::string all = join_problems(e);
    FF_FAIL("this model cannot be written in the Hugging Face %s layout:%s", name, all.c_str());
  }
  return f;
}

std::string hf_config_text(const ModelConfig& c, HfFamily f, bool bf16) {
  const json j = f == HfFamily::nemotron_h ? nemotron_h_json(c, bf16) : llama_like_json(c, hf_table(f), bf16);
  std::string text = j.dump(2) + "\n";
  for (const char* word : {"-Infinity", "Infinity"}) {
    const std::string quoted = std::string("\"") + kNonFinite + word + "\"";
    for (size_t at; (at = text.find(quoted)) != std::string::npos;) text.replace(at, quoted.size(), word);
  }
  return text;
}

ModelConfig import_hf_config(const std::string& dir, HfFamily* family) {
  const std::string path = dir + "/config.json";
  const json j = read_json(path);
  const std::string type = j.value("model_type", "");
  HfFamily f;
  FF_CHECK(hf_family_from_name(type, f), "'%s': model_type \"%s\" is not one fivefold converts (llama, mixtral, "
           "qwen2_moe, nemotron_h)", path.c_str(), type.c_str());
  if (family) *family = f;
  const Keys k{j, path};
  ModelConfig c = f == HfFamily::nemotron_h ? nemotron_h_model(k) : llama_like_model(k, f);
  auto errors = c.validate();
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("'%s' gives an invalid fivefold model:%s", path.c_str(), all.c_str());
  }
  return c;
}

}  // namespace ff
