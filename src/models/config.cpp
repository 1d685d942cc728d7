#include "models/config.h"

#include <algorithm>

#include "core/check.h"
#include "models/layer_kind.h"

namespace ff {

namespace {

int64_t norm_params(const ModelConfig& c) { return c.norm == NormKind::layernorm1p ? 2 * c.d_model : c.d_model; }

// Embedding, head and final norm, then each layer's pre-norm and mixer (models/layer_kind.h).
int64_t count(const ModelConfig& c, int64_t experts_counted) {
  const int64_t head = c.head == HeadKind::value ? c.value_outputs * c.d_model : (c.tie_embeddings ? 0 : c.vocab_size * c.d_model);
  int64_t n = c.vocab_size * c.d_model + head + norm_params(c);
  for (LayerKind k : c.layers()) n += norm_params(c) + layer_kind(k).parameters(c, experts_counted);
  return n;
}

}  // namespace

int64_t count_parameters(const ModelConfig& c) { return count(c, c.num_experts); }
int64_t count_active_parameters(const ModelConfig& c) { return count(c, c.moe_top_k); }

std::vector<std::string> model_preset_names() {
  return {"moe-tiny",        "moe-small",      "llama-small",   "mixtral-small",       "qwen2-moe-small", "nemotron4-small",
          "nemotron4-15b",   "nemotron-h-small", "nemotron-h-moe-small", "nemotron-h-8b", "nemotron-h-4b", "deepseek-v3-small"};
}

ModelConfig model_preset(const std::string& name) {
  ModelConfig c;  // the defaults are the small Mixtral-style MoE of the benchmarks
  if (name == "moe-small" || name == "mixtral-small") return c;
  if (name == "moe-tiny") {  // the default training job: learns visibly in minutes on 2 cores
    c.vocab_size = 4096; c.d_model = 256; c.num_layers = 4; c.num_heads = 4; c.num_kv_heads = 2; c.seq_len = 256;
    c.num_experts = 8; c.moe_top_k = 2; c.moe_ffn_hidden = 512; c.ffn_hidden = 704;
    return c;
  }
  if (name == "deepseek-v3-small") {  // DeepSeek-V3's routing at the size of moe-tiny (trains on KJV in minutes)
    c.vocab_size = 4096; c.d_model = 256; c.num_heads = 4; c.num_kv_heads = 2; c.seq_len = 256; c.ffn_hidden = 704;
    c.layer_pattern = "*-*E*E*E";  // the first block dense, as V3's first_k_dense_replace
    c.num_experts = 16; c.moe_top_k = 4; c.moe_ffn_hidden = 128;  // fine-grained experts
    c.moe_shared_expert_hidden = 128;                              // one shared expert of the same width
    c.moe_router_score = cpu::RouterScore::sigmoid; c.moe_router_norm_topk_prob = true;
    c.moe_router_topk_scaling = 2.5;                               // V3's routed_scaling_factor
    c.moe_expert_bias = true; c.moe_expert_bias_update_rate = 1e-3;  // aux-loss-free balancing
    c.moe_load_balancing = LoadBalancing::seq_aux_loss; c.moe_aux_loss_coeff = 1e-4;  // V3's alpha
    c.moe_router_groups = 4; c.moe_router_group_topk = 2;          // V3: 8 groups, 4 per token; K / M = 2 as there
    return c;
  }
  if (name == "llama-small") {
    c.num_experts = 0; c.layer_pattern = ""; c.ffn_hidden = 1408;
    return c;
  }
  if (name == "qwen2-moe-small") {
    c.num_experts = 16; c.moe_top_k = 4; c.moe_ffn_hidden = 352;
    c.moe_router_pre_softmax = true; c.moe_router_norm_topk_prob = false;
    c.moe_shared_expert_hidden = 1408; c.moe_shared_expert_gate = true;
    return c;
  }
  if (name == "nemotron4-small") {  // methods.md §2.3 (a)
    c.num_experts = 0; c.d_model = 256; c.num_layers = 4; c.num_heads = 8; c.num_kv_heads = 2;
    c.ffn_hidden = 1024; c.activation = Activation::squared_relu; c.norm = NormKind::layernorm1p;
    c.rotary_percent = 0.5;
    return c;
  }
  if (name == "nemotron4-15b") {  // methods.md §2.1
    c.num_experts = 0; c.vocab_size = 256000; c.d_model = 6144; c.num_layers = 32; c.num_heads = 48;
    c.num_kv_heads = 8; c.head_dim = 128; c.ffn_hidden = 24576; c.activation = Activation::squared_relu;
    c.norm = NormKind::layernorm1p; c.rotary_percent = 0.5; c.seq_len = 4096; c.init_std = 0.0134;
    return c;
  }
  if (name.rfind("nemotron-h", 0) == 0) {  // methods.md §3.1: Mamba2 + a few attention layers (no RoPE) + squared-ReLU MLPs
    c.num_experts = 0; c.activation = Activation::squared_relu; c.norm = NormKind::rmsnorm;
    c.position_embedding = PositionEmbedding::none; c.tie_embeddings = false; c.mamba_conv_kernel = 4;
    if (name == "nemotron-h-small" || name == "nemotron-h-moe-small") {  // trains on KJV in minutes on 2 cores
      c.vocab_size = 4096; c.d_model = 256; c.num_heads = 4; c.num_kv_heads = 2; c.seq_len = 256; c.ffn_hidden = 1024;
      c.mamba_num_heads = 8; c.mamba_head_dim = 64; c.mamba_groups = 2; c.mamba_state = 32; c.mamba_chunk = 64;
      c.layer_pattern = "M-M-M*-M-";
      if (name == "nemotron-h-moe-small") {  // the MLPs as MoEs of squared-ReLU experts
        c.layer_pattern = "MEM*EMEME";
        c.num_experts = 8; c.moe_top_k = 2; c.moe_ffn_hidden = 256;
      }
      return c;
    }
    if (name == "nemotron-h-8b" || name == "nemotron-h-4b") {
      const bool pruned = name == "nemotron-h-4b";  // Minitron-SSM's 4B: D, FFN and Mamba heads pruned
      c.vocab_size = 131072; c.d_model = pruned ? 3072 : 4096; c.num_heads = 32; c.num_kv_heads = 8; c.head_dim = 128;
      c.ffn_hidden = pruned ? 12288 : 21504; c.seq_len = 8192;
      c.mamba_num_heads = pruned ? 112 : 128; c.mamba_head_dim = 64; c.mamba_groups = 8; c.mamba_state = 128;
      c.mamba_chunk = 128;
      c.layer_pattern = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-";
      return c;
    }
  }
  std::string names;
  for (const auto& n : model_preset_names()) names += " " + n;
  FF_FAIL("unknown model preset '%s'; choose one of:%s", name.c_str(), names.c_str());
}

}  // namespace ff
