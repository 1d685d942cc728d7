#include "io/hf_convert.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/check.h"

namespace ff {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// One HF tensor of a concrete model: its name and the fivefold tensors it is made of.
struct Planned {
  std::string hf;
  std::vector<std::string> internal;
  HfLayout layout;
  size_t parts;  // internal templates per entry (concat parts)
};

int64_t blocks_of(const ModelConfig& c) {
  const std::string p = c.pattern();
  return std::count(p.begin(), p.end(), '*');
}

bool applies(HfWhen w, const ModelConfig& c) {
  switch (w) {
    case HfWhen::always: return true;
    case HfWhen::untied: return !c.tie_embeddings;
    case HfWhen::shared_expert: return c.moe_shared_expert_hidden > 0;
  }
  return false;
}

bool has(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

std::vector<Planned> plan(const HfTable& t, const ModelConfig& c) {
  const int64_t blocks = blocks_of(c), experts = t.family == HfFamily::llama ? 0 : c.num_experts;
  std::vector<Planned> out;
  for (const HfRule& r : t.rules) {
    if (!applies(r.when, c)) continue;
    const bool per_block = has(r.hf, "{L}") || has(r.internal[0], "{L}");
    const bool hf_per_expert = has(r.hf, "{E}");
    for (int64_t L = 0; L < (per_block ? blocks : 1); ++L) {
      if (r.layout == HfLayout::stack) {
        Planned p{hf_fill(r.hf, L, 0), {}, r.layout, r.internal.size()};
        for (int64_t e = 0; e < experts; ++e)
          for (const auto& tmpl : r.internal) p.internal.push_back(hf_fill(tmpl, L, e));
        out.push_back(std::move(p));
        continue;
      }
      for (int64_t e = 0; e < (hf_per_expert ? experts : 1); ++e) {
        Planned p{hf_fill(r.hf, L, e), {}, r.layout, r.internal.size()};
        for (const auto& tmpl : r.internal) p.internal.push_back(hf_fill(tmpl, L, e));
        out.push_back(std::move(p));
      }
    }
  }
  return out;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// An HF tensor to write: borrowed data (same layout) or owned (built).
struct OutTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::vector<float> owned;
};

json config_json(const ModelConfig& c, const HfTable& t, bool bf16) {
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
  }
  return j;
}

// Reads config.json into a ModelConfig; every key the family needs, with HF's defaults where HF
// has them.
ModelConfig model_from_config(const json& j, HfFamily f, const std::string& path) {
  // A size: a whole number in [0, 2^31 - 1] (token ids and the kernels' row indices are int32),
  // never truncated (64.5 -> 64) or wrapped (1e30 -> negative).
  auto whole = [&](const char* k, const json& v) -> int64_t {
    const double d = v.get<double>();
    FF_CHECK(std::isfinite(d) && d == std::floor(d) && d >= 0 && d <= 2147483647.0,
             "'%s': key '%s' = %s is not a whole number between 0 and 2147483647", path.c_str(), k, v.dump().c_str());
    return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(d);
  };
  auto need = [&](const char* k) -> int64_t {
    FF_CHECK(j.contains(k) && j[k].is_number(), "'%s': key '%s' is missing or not a number", path.c_str(), k);
    return whole(k, j[k]);
  };
  auto num = [&](const char* k, double def) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : def; };
  auto size_or = [&](const char* k, int64_t def) { return j.contains(k) && j[k].is_number() ? whole(k, j[k]) : def; };
  auto flag = [&](const char* k, bool def) { return j.contains(k) && j[k].is_boolean() ? j[k].get<bool>() : def; };
  const std::string act = j.value("hidden_act", "silu");
  FF_CHECK(act == "silu", "'%s': hidden_act = \"%s\"; fivefold imports SwiGLU (silu) models", path.c_str(), act.c_str());
  FF_CHECK(!j.contains("rope_scaling") || j["rope_scaling"].is_null(),
           "'%s': rope_scaling = %s is not supported; fivefold uses plain RoPE", path.c_str(),
           j.value("rope_scaling", json()).dump().c_str());
  for (const char* k : {"attention_bias", "mlp_bias"})
    FF_CHECK(!flag(k, false), "'%s': %s = true; fivefold's Llama layers have no biases", path.c_str(), k);
  ModelConfig c;
  c.layer_pattern = "";
  c.d_model = need("hidden_size");
  c.num_layers = need("num_hidden_layers");
  c.num_heads = need("num_attention_heads");
  c.num_kv_heads = size_or("num_key_value_heads", c.num_heads);
  c.vocab_size = need("vocab_size");
  c.head_dim = size_or("head_dim", 0);
  if (c.num_heads > 0 && c.head_dim == c.d_model / c.num_heads && c.d_model % c.num_heads == 0) c.head_dim = 0;
  c.norm_eps = num("rms_norm_eps", f == HfFamily::mixtral ? 1e-5 : 1e-6);
  c.rope_base = num("rope_theta", f == HfFamily::mixtral ? 1e6 : 10000.0);
  c.seq_len = size_or("max_position_embeddings", 4096);
  c.tie_embeddings = flag("tie_word_embeddings", false);
  c.init_std = num("initializer_range", 0.02);
  c.activation = Activation::swiglu;
  c.norm = NormKind::rmsnorm;
  c.position_embedding = PositionEmbedding::rope;
  c.rotary_percent = 1.0;
  c.moe_aux_loss_coeff = num("router_aux_loss_coef", 0.01);
  c.moe_router_score = cpu::RouterScore::softmax;
  c.moe_router_topk_scaling = 1.0;
  c.moe_shared_expert_hidden = 0;
  c.moe_shared_expert_gate = false;
  switch (f) {
    case HfFamily::llama:
      c.num_experts = 0;
      c.ffn_hidden = need("intermediate_size");
      break;
    case HfFamily::mixtral:  // softmax over all, top-k, renormalise == top-k then softmax
      c.num_experts = need("num_local_experts");
      c.moe_top_k = need("num_experts_per_tok");
      c.moe_ffn_hidden = need("intermediate_size");
      c.moe_router_pre_softmax = false;
      c.moe_router_norm_topk_prob = false;
      break;
    case HfFamily::qwen2_moe:
      FF_CHECK(num("decoder_sparse_step", 1) == 1 && j.value("mlp_only_layers", json::array()).empty(),
               "'%s': decoder_sparse_step != 1 or mlp_only_layers non-empty: fivefold imports Qwen2-MoE models whose "
               "every block is MoE", path.c_str());
      c.num_experts = need("num_experts");
      c.moe_top_k = need("num_experts_per_tok");
      c.moe_ffn_hidden = need("moe_intermediate_size");
      c.ffn_hidden = size_or("intermediate_size", c.ffn_hidden);
      c.moe_shared_expert_hidden = need("shared_expert_intermediate_size");
      c.moe_shared_expert_gate = c.moe_shared_expert_hidden > 0;
      c.moe_router_pre_softmax = true;
      c.moe_router_norm_topk_prob = flag("norm_topk_prob", false);
      break;
  }
  auto errors = c.validate();
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("'%s' gives an invalid fivefold model:%s", path.c_str(), all.c_str());
  }
  return c;
}

}  // namespace

HfFamily hf_family_for(const ModelConfig& c, const std::string& requested) {
  const std::string pattern = c.pattern();
  const bool moe = pattern.find('E') != std::string::npos;
  HfFamily f;
  if (requested == "auto") f = !moe ? HfFamily::llama : c.moe_shared_expert_hidden > 0 ? HfFamily::qwen2_moe : HfFamily::mixtral;
  else FF_CHECK(hf_family_from_name(requested, f), "--family %s: choose llama, mixtral, qwen2_moe or auto", requested.c_str());
  const char* name = hf_family_name(f);
  std::vector<std::string> e;
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
  if (!e.empty()) {
    const std::string all = join_problems(e);
    FF_FAIL("this model cannot be written in the Hugging Face %s layout:%s", name, all.c_str());
  }
  return f;
}

void export_hf(const ModelConfig& c, const TensorMap& tensors, const std::string& out_dir,
               const HfExportOptions& o) {
  const HfTable& table = hf_table(hf_family_for(c, o.family));
  std::set<std::string> used;
  std::vector<OutTensor> out;
  for (const Planned& p : plan(table, c)) {
    std::vector<const HostTensor*> parts;
    for (const auto& n : p.internal) {
      auto it = tensors.find(n);
      FF_CHECK(it != tensors.end(), "fivefold tensor '%s' (for Hugging Face '%s') is missing from the model",
               n.c_str(), p.hf.c_str());
      parts.push_back(&it->second);
      if (p.layout != HfLayout::zero_bias) used.insert(n);
    }
    OutTensor t;
    t.name = p.hf;
    if (p.layout == HfLayout::same) {
      t.shape = parts[0]->shape;
      t.data = parts[0]->data.data();
    } else if (p.layout == HfLayout::zero_bias) {
      t.shape = {parts[0]->shape.at(0)};
      t.owned.assign(static_cast<size_t>(t.shape[0]), 0.0f);
    } else {  // concat / stack: dim 0 of the parts concatenated, then (stack) a leading expert axis
      for (const HostTensor* h : parts) {
        FF_CHECK(h->shape == parts[0]->shape, "'%s': the tensors fused into it differ in shape (%s vs %s)",
                 p.hf.c_str(), shape_str(h->shape).c_str(), shape_str(parts[0]->shape).c_str());
        t.owned.insert(t.owned.end(), h->data.begin(), h->data.end());
      }
      t.shape = parts[0]->shape;
      t.shape[0] *= static_cast<int64_t>(p.parts);
      if (p.layout == HfLayout::stack) t.shape.insert(t.shape.begin(), static_cast<int64_t>(parts.size() / p.parts));
    }
    if (!t.owned.empty() || t.data == nullptr) t.data = t.owned.data();
    out.push_back(std::move(t));
  }
  for (const auto& [name, t] : tensors)
    FF_CHECK(used.count(name), "fivefold tensor '%s' has no Hugging Face name in the %s table; nothing was written",
             name.c_str(), table.model_type.c_str());

  // Shards: greedy in table order, each at most max_shard_bytes (a bigger tensor gets its own).
  const size_t esize = o.bf16 ? 2 : 4;
  std::vector<std::vector<size_t>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t bytes = numel(out[i].shape) * static_cast<int64_t>(esize);
    if (!shards.back().empty() && in_shard + bytes > o.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
    total += bytes;
  }
  fs::create_directories(out_dir);
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : strprintf("model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    std::vector<std::vector<uint16_t>> halves;
    halves.reserve(shards[s].size());
    std::vector<SafetensorsEntry> entries;
    for (size_t i : shards[s]) {
      const OutTensor& t = out[i];
      weight_map[t.name] = file;
      if (!o.bf16) {
        entries.push_back({t.name, t.shape, t.data, StDtype::F32});
        continue;
      }
      std::vector<uint16_t> h(static_cast<size_t>(numel(t.shape)));
      for (size_t k = 0; k < h.size(); ++k) h[k] = f32_to_bf16(t.data[k]);
      halves.push_back(std::move(h));
      entries.push_back({t.name, t.shape, halves.back().data(), StDtype::BF16});
    }
    write_safetensors(out_dir + "/" + file, entries, {{"format", "pt"}});
  }
  if (shards.size() > 1) {
    std::ofstream f(out_dir + "/model.safetensors.index.json");
    f << json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) << "\n";
    FF_CHECK(f.good(), "cannot write %s/model.safetensors.index.json", out_dir.c_str());
  }
  std::ofstream cf(out_dir + "/config.json");
  cf << config_json(c, table, o.bf16).dump(2) << "\n";
  FF_CHECK(cf.good(), "cannot write %s/config.json", out_dir.c_str());
}

ModelConfig import_hf_config(const std::string& dir, HfFamily* family) {
  const std::string cpath = dir + "/config.json";
  std::ifstream cf(cpath);
  FF_CHECK(cf.good(), "'%s' is missing: a Hugging Face model folder has config.json", cpath.c_str());
  json cj;
  try {
    cj = json::parse(cf);
  } catch (const std::exception& e) {
    FF_FAIL("'%s' is not valid JSON: %s", cpath.c_str(), e.what());
  }
  const std::string type = cj.value("model_type", "");
  HfFamily f;
  FF_CHECK(hf_family_from_name(type, f), "'%s': model_type \"%s\" is not one fivefold converts (llama, "
           "mixtral, qwen2_moe)", cpath.c_str(), type.c_str());
  if (family) *family = f;
  return model_from_config(cj, f, cpath);
}

HfImport import_hf(const std::string& dir) {
  HfImport r;
  r.model = import_hf_config(dir, &r.family);
  const HfTable& table = hf_table(r.family);

  // The files and which holds each tensor.
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> where;
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    json ij;
    try {
      ij = json::parse(std::ifstream(index));
    } catch (const std::exception& e) {
      FF_FAIL("'%s' is not valid JSON: %s", index.c_str(), e.what());
    }
    FF_CHECK(ij.contains("weight_map") && ij["weight_map"].is_object(), "'%s' has no weight_map object", index.c_str());
    std::map<std::string, size_t> file_no;
    for (auto it = ij["weight_map"].begin(); it != ij["weight_map"].end(); ++it) {
      FF_CHECK(it->is_string(), "'%s': weight_map[%s] is not a file name", index.c_str(), it.key().c_str());
      const std::string fname = it->get<std::string>();
      FF_CHECK(fname.find('/') == std::string::npos, "'%s': weight_map names '%s' outside the folder", index.c_str(),
               fname.c_str());
      if (!file_no.count(fname)) {
        file_no[fname] = files.size();
        files.emplace_back(dir + "/" + fname);
      }
      where[it.key()] = file_no[fname];
      FF_CHECK(files[file_no[fname]].contains(it.key()), "'%s' says tensor '%s' is in '%s', which lacks it",
               index.c_str(), it.key().c_str(), fname.c_str());
    }
    for (size_t i = 0; i < files.size(); ++i)
      for (const auto& n : files[i].names())
        FF_CHECK(where.count(n) && where[n] == i, "'%s': tensor '%s' is not in the index's weight_map",
                 files[i].path().c_str(), n.c_str());
  } else {
    files.emplace_back(dir + "/model.safetensors");
    for (const auto& n : files[0].names()) where[n] = 0;
  }

  const auto planned = plan(table, r.model);
  std::set<std::string> expected;
  for (const auto& p : planned) expected.insert(p.hf);
  for (const auto& [name, f] : where) {
    if (expected.count(name)) continue;
    bool ignored = false;
    for (const auto& tmpl : table.ignored) ignored = ignored || hf_match(tmpl, name);
    FF_CHECK(ignored, "'%s': unknown tensor '%s': not in the %s table and not listed as ignored",
             files[f].path().c_str(), name.c_str(), table.model_type.c_str());
  }
  for (const Planned& p : planned) {
    auto it = where.find(p.hf);
    FF_CHECK(it != where.end(), "tensor '%s' is missing from %s (the %s layout of this config.json needs it)",
             p.hf.c_str(), dir.c_str(), table.model_type.c_str());
    const SafetensorsFile& file = files[it->second];
    HostTensor t = file.read_any(p.hf);
    if (p.layout == HfLayout::zero_bias) {
      for (float x : t.data)
        FF_CHECK(x == 0.0f, "'%s': tensor '%s' is a non-zero bias; fivefold attention has no q/k/v bias",
                 file.path().c_str(), p.hf.c_str());
      continue;
    }
    if (p.layout == HfLayout::same) {
      r.tensors[p.internal[0]] = std::move(t);
      continue;
    }
    // concat / stack: equal pieces of dim 0 (after the expert axis for stack).
    std::vector<int64_t> piece = t.shape;
    const size_t n = p.internal.size();
    if (p.layout == HfLayout::stack) {
      FF_CHECK(!piece.empty() && piece[0] * static_cast<int64_t>(p.parts) == static_cast<int64_t>(n),
               "'%s': tensor '%s' has shape %s; its leading axis should be the %zu experts", file.path().c_str(),
               p.hf.c_str(), shape_str(t.shape).c_str(), n / p.parts);
      piece.erase(piece.begin());
    }
    FF_CHECK(!piece.empty() && piece[0] % static_cast<int64_t>(p.parts) == 0,
             "'%s': tensor '%s' of shape %s does not split into %zu equal parts", file.path().c_str(), p.hf.c_str(),
             shape_str(t.shape).c_str(), p.parts);
    piece[0] /= static_cast<int64_t>(p.parts);
    const size_t each = static_cast<size_t>(numel(piece));
    for (size_t k = 0; k < n; ++k)
      r.tensors[p.internal[k]] = {piece, std::vector<float>(t.data.begin() + static_cast<std::ptrdiff_t>(k * each),
                                                           t.data.begin() + static_cast<std::ptrdiff_t>((k + 1) * each))};
  }
  return r;
}

}  // namespace ff
