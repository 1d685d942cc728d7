#include "io/hf_tables.h"

#include "core/check.h"

namespace ff {

namespace {

// Shared by every family: embeddings, attention, norms, head.
std::vector<HfRule> attention_rules() {
  return {
      {"model.embed_tokens.weight", {"model.embed_tokens.weight"}},
      {"model.layers.{L}.input_layernorm.weight", {"model.layers.{L}.input_layernorm.weight"}},
      {"model.layers.{L}.self_attn.q_proj.weight", {"model.layers.{L}.self_attn.q_proj.weight"}},
      {"model.layers.{L}.self_attn.k_proj.weight", {"model.layers.{L}.self_attn.k_proj.weight"}},
      {"model.layers.{L}.self_attn.v_proj.weight", {"model.layers.{L}.self_attn.v_proj.weight"}},
      {"model.layers.{L}.self_attn.o_proj.weight", {"model.layers.{L}.self_attn.o_proj.weight"}},
      {"model.layers.{L}.post_attention_layernorm.weight", {"model.layers.{L}.post_attention_layernorm.weight"}},
      {"model.norm.weight", {"model.norm.weight"}},
      {"lm_head.weight", {"lm_head.weight"}, HfLayout::same, HfWhen::untied},
  };
}

// Older Llama checkpoints carry the RoPE inverse frequencies as a buffer; fivefold derives them.
const std::vector<std::string> kRotaryBuffers = {"model.layers.{L}.self_attn.rotary_emb.inv_freq"};

HfTable make_llama() {
  HfTable t{HfFamily::llama, "llama", "LlamaForCausalLM", attention_rules(), kRotaryBuffers};
  for (const char* p : {"gate_proj", "up_proj", "down_proj"})
    t.rules.push_back({std::string("model.layers.{L}.mlp.") + p + ".weight",
                       {std::string("model.layers.{L}.mlp.") + p + ".weight"}});
  return t;
}

HfTable make_mixtral() {
  HfTable t{HfFamily::mixtral, "mixtral", "MixtralForCausalLM", attention_rules(), kRotaryBuffers};
  const std::string hf = "model.layers.{L}.block_sparse_moe.", ff = "model.layers.{L}.mlp.";
  t.rules.push_back({hf + "gate.weight", {ff + "gate.weight"}});
  t.rules.push_back({hf + "experts.{E}.w1.weight", {ff + "experts.{E}.gate_proj.weight"}});
  t.rules.push_back({hf + "experts.{E}.w3.weight", {ff + "experts.{E}.up_proj.weight"}});
  t.rules.push_back({hf + "experts.{E}.w2.weight", {ff + "experts.{E}.down_proj.weight"}});
  return t;
}

HfTable make_qwen2_moe() {
  HfTable t{HfFamily::qwen2_moe, "qwen2_moe", "Qwen2MoeForCausalLM", attention_rules(), kRotaryBuffers};
  const std::string p = "model.layers.{L}.";
  for (const char* proj : {"q_proj", "k_proj", "v_proj"})
    t.rules.push_back({p + "self_attn." + proj + ".bias", {p + "self_attn." + proj + ".weight"}, HfLayout::zero_bias});
  t.rules.push_back({p + "mlp.gate.weight", {p + "mlp.gate.weight"}});
  for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
    t.rules.push_back({p + "mlp.experts.{E}." + proj + ".weight", {p + "mlp.experts.{E}." + proj + ".weight"}});
    t.rules.push_back({p + "mlp.shared_expert." + proj + ".weight", {p + "mlp.shared_expert." + proj + ".weight"},
                       HfLayout::same, HfWhen::shared_expert});
  }
  t.rules.push_back({p + "mlp.shared_expert_gate.weight", {p + "mlp.shared_expert_gate.weight"}, HfLayout::same,
                     HfWhen::shared_expert});
  return t;
}

}  // namespace

const HfTable& hf_table(HfFamily f) {
  static const HfTable llama = make_llama(), mixtral = make_mixtral(), qwen2_moe = make_qwen2_moe();
  switch (f) {
    case HfFamily::llama: return llama;
    case HfFamily::mixtral: return mixtral;
    case HfFamily::qwen2_moe: return qwen2_moe;
  }
  FF_FAIL("unknown Hugging Face family");
}

const char* hf_family_name(HfFamily f) {
  switch (f) {
    case HfFamily::llama: return "llama";
    case HfFamily::mixtral: return "mixtral";
    case HfFamily::qwen2_moe: return "qwen2_moe";
  }
  return "?";
}

bool hf_family_from_name(const std::string& s, HfFamily& out) {
  for (HfFamily f : {HfFamily::llama, HfFamily::mixtral, HfFamily::qwen2_moe})
    if (s == hf_family_name(f)) {
      out = f;
      return true;
    }
  return false;
}

std::string hf_fill(const std::string& tmpl, int64_t block, int64_t expert) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl.compare(i, 3, "{L}") == 0) {
      out += std::to_string(block);
      i += 2;
    } else if (tmpl.compare(i, 3, "{E}") == 0) {
      out += std::to_string(expert);
      i += 2;
    } else {
      out += tmpl[i];
    }
  }
  return out;
}

bool hf_match(const std::string& tmpl, const std::string& name) {
  size_t i = 0, j = 0;
  while (i < tmpl.size()) {
    if (tmpl.compare(i, 3, "{L}") == 0 || tmpl.compare(i, 3, "{E}") == 0) {
      const size_t start = j;
      while (j < name.size() && name[j] >= '0' && name[j] <= '9') ++j;
      if (j == start) return false;
      i += 3;
    } else {
      if (j >= name.size() || name[j] != tmpl[i]) return false;
      ++i;
      ++j;
    }
  }
  return j == name.size();
}

}  // namespace ff
