#include "models/hf_tables.h"

#include "core/check.h"

namespace ff {

namespace {

// Older Llama checkpoints carry the RoPE inverse frequencies as a buffer; fivefold derives them.
const std::vector<std::string> kRotaryBuffers = {"model.layers.{L}.self_attn.rotary_emb.inv_freq"};

// Llama, Mixtral and Qwen2-MoE: the same embedding, final norm and head, blocks of attention and
// MLP/MoE.
HfTable llama_like(HfFamily f, const char* model_type, const char* architecture) {
  return {f, model_type, architecture, "model.layers.{L}.", true,
          {{"model.embed_tokens.weight", {"model.embed_tokens.weight"}}},
          {{"model.norm.weight", {"model.norm.weight"}}, {"lm_head.weight", {"lm_head.weight"}, HfLayout::same, HfWhen::untied}},
          kRotaryBuffers, "model.", "", {}};
}

// NemotronHForCausalLM: backbone.{embeddings, layers.{i}.{norm, mixer}, norm_f} and lm_head.
// NVIDIA's checkpoints and remote code name the body "backbone"; transformers' own port names it
// "model" (it renames backbone. -> model. and embedding. -> embeddings. on load). Export writes
// "backbone.", which both load; import reads either.
HfTable nemotron_h() {
  return {HfFamily::nemotron_h, "nemotron_h", "NemotronHForCausalLM", "backbone.layers.{L}.", false,
          {{"backbone.embeddings.weight", {"model.embed_tokens.weight"}}},
          {{"backbone.norm_f.weight", {"model.norm.weight"}}, {"lm_head.weight", {"lm_head.weight"}, HfLayout::same, HfWhen::untied}},
          {}, "backbone.", "model.", {{"backbone.embedding.weight", "backbone.embeddings.weight"}}};
}

}  // namespace

const HfTable& hf_table(HfFamily f) {
  static const HfTable llama = llama_like(HfFamily::llama, "llama", "LlamaForCausalLM"),
                       mixtral = llama_like(HfFamily::mixtral, "mixtral", "MixtralForCausalLM"),
                       qwen2_moe = llama_like(HfFamily::qwen2_moe, "qwen2_moe", "Qwen2MoeForCausalLM"),
                       nemotron = nemotron_h();
  switch (f) {
    case HfFamily::llama: return llama;
    case HfFamily::mixtral: return mixtral;
    case HfFamily::qwen2_moe: return qwen2_moe;
    case HfFamily::nemotron_h: return nemotron;
  }
  FF_FAIL("unknown Hugging Face family");
}

const char* hf_family_name(HfFamily f) {
  switch (f) {
    case HfFamily::llama: return "llama";
    case HfFamily::mixtral: return "mixtral";
    case HfFamily::qwen2_moe: return "qwen2_moe";
    case HfFamily::nemotron_h: return "nemotron_h";
  }
  return "?";
}

bool hf_family_from_name(const std::string& s, HfFamily& out) {
  for (HfFamily f : {HfFamily::llama, HfFamily::mixtral, HfFamily::qwen2_moe, HfFamily::nemotron_h})
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
