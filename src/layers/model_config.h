// ModelConfig: the architecture of a decoder LM, dense or MoE, one field list. It lives below the
// layers (which read their sizes from it); counting and presets are in models/config.h.
// Legend used in the help texts: D model width, V vocab, H heads, F MLP hidden, E experts, K top-k.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/fields.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/router.h"

namespace ff {

enum class Activation : uint8_t { swiglu, squared_relu, gelu };
enum class NormKind : uint8_t { rmsnorm, layernorm1p };
enum class PositionEmbedding : uint8_t { rope, none };
// The GEMMs' operand precision. bf16: bf16 weight copies and GEMM inputs, fp32 accumulation and
// results; master weights, gradients, optimizer, norms' statistics, softmaxes, router and losses
// stay fp32 (DESIGN decision 6).
enum class Precision : uint8_t { fp32, bf16 };

std::span<const EnumName<Activation>> enum_names(Activation);
std::span<const EnumName<NormKind>> enum_names(NormKind);
std::span<const EnumName<PositionEmbedding>> enum_names(PositionEmbedding);
std::span<const EnumName<Precision>> enum_names(Precision);
}  // namespace ff
namespace ff::cpu {
std::span<const EnumName<RouterScore>> enum_names(RouterScore);
std::span<const EnumName<DropPolicy>> enum_names(DropPolicy);
}  // namespace ff::cpu

namespace ff {

// The model's head: the LM head (logits over the vocabulary), or a scalar per token (reward
// models, critics: layers/value_head.h).
enum class HeadKind : uint8_t { lm, value };
std::span<const EnumName<HeadKind>> enum_names(HeadKind);

// The router's load-balancing loss (specs/parallelism-and-moe.md §6.3-6.4; layers/moe/router.h),
// weighted by moe_aux_loss_coeff: over each micro-batch (Switch/GShard), each sequence
// (DeepSeek-V2/V3), the step's global batch (token counts summed over the micro-batches so far and
// every data-parallel replica), or none.
enum class LoadBalancing : uint8_t { aux_loss, seq_aux_loss, global_aux_loss, none };
std::span<const EnumName<LoadBalancing>> enum_names(LoadBalancing);

// One character per layer: '*' attention, '-' dense MLP, 'E' MoE, 'M' Mamba2 (models/layer_kind.h).
enum class LayerKind : uint8_t { attention, mlp, moe, mamba };

struct ModelConfig {
  int64_t vocab_size = 8192;
  int64_t d_model = 512;
  int64_t num_layers = 8;       // transformer blocks, used when layer_pattern is empty
  std::string layer_pattern;    // explicit per-layer pattern; empty = ("*" + "E" or "-") x num_layers
  int64_t num_heads = 8;
  int64_t num_kv_heads = 4;
  int64_t head_dim = 0;         // 0 = d_model / num_heads
  int64_t seq_len = 512;
  int64_t ffn_hidden = 1408;    // dense MLP hidden width
  Activation activation = Activation::swiglu;
  NormKind norm = NormKind::rmsnorm;
  double norm_eps = 1e-5;
  PositionEmbedding position_embedding = PositionEmbedding::rope;
  double rope_base = 10000.0;
  double rotary_percent = 1.0;
  bool tie_embeddings = false;
  double init_std = 0.02;
  // MoE
  int64_t num_experts = 8;
  int64_t moe_top_k = 2;
  int64_t moe_ffn_hidden = 1408;
  int64_t moe_shared_expert_hidden = 0;  // 0 = no shared expert
  bool moe_shared_expert_gate = false;
  cpu::RouterScore moe_router_score = cpu::RouterScore::softmax;
  bool moe_router_pre_softmax = false;
  bool moe_router_norm_topk_prob = false;
  double moe_router_topk_scaling = 1.0;
  LoadBalancing moe_load_balancing = LoadBalancing::aux_loss;
  double moe_aux_loss_coeff = 0.01;
  double moe_z_loss_coeff = 0.0;
  bool moe_expert_bias = false;
  double moe_expert_bias_update_rate = 1e-3;
  int64_t moe_router_groups = 0;      // group-limited routing: G expert groups; 0 = none
  int64_t moe_router_group_topk = 0;  // groups each token may use (M)
  double moe_capacity_factor = 0.0;  // 0 = dropless
  cpu::DropPolicy moe_drop_policy = cpu::DropPolicy::probs;
  bool moe_pad_to_capacity = false;
  // Mamba2 ('M' layers; specs/methods.md §3.2): H heads of P channels (d_inner = H P), G groups
  // of state size N sharing B and C.
  int64_t mamba_num_heads = 8;
  int64_t mamba_head_dim = 64;
  int64_t mamba_groups = 1;
  int64_t mamba_state = 128;
  int64_t mamba_conv_kernel = 4;
  int64_t mamba_chunk = 128;
  double mamba_dt_min = 1e-3, mamba_dt_max = 0.1, mamba_dt_init_floor = 1e-4;
  double mamba_dt_limit_min = 0, mamba_dt_limit_max = 0;  // clamp of Δ; max 0 = none
  Precision precision = Precision::fp32;
  int64_t head_chunk_rows = 0;  // LM head + cross-entropy over row chunks; 0 = all rows at once
  HeadKind head = HeadKind::lm;
  int64_t value_outputs = 1;    // model.head = value: values per token (SteerLM: one per attribute)
  // LoRA adapters (layers/linear.h); the base weights are then frozen.
  int64_t lora_rank = 0;
  double lora_alpha = 16;
  double lora_dropout = 0;
  std::string lora_targets = "q_proj,k_proj,v_proj,o_proj";

  template <class V>
  void visit_fields(V& v) {
    v(vocab_size, "vocab_size", "vocabulary size V");
    v(d_model, "d_model", "model width D");
    v(num_layers, "num_layers", "transformer blocks (attention + MLP/MoE) when layer_pattern is empty");
    v(layer_pattern, "layer_pattern", "one char per layer: '*' attention, '-' MLP, 'E' MoE, 'M' Mamba2; empty = derived "
                                      "from num_layers");
    v(num_heads, "num_heads", "query heads");
    v(num_kv_heads, "num_kv_heads", "key/value heads (GQA groups); must divide num_heads");
    v(head_dim, "head_dim", "per-head width (kv_channels); 0 = d_model / num_heads");
    v(seq_len, "seq_len", "sequence length (positions) of a training sample");
    v(ffn_hidden, "ffn_hidden", "dense MLP hidden width F");
    v(activation, "activation", "MLP and expert activation");
    v(norm, "norm", "normalisation: rmsnorm, or layernorm1p (zero-centred gain, Nemotron-4)");
    v(norm_eps, "norm_eps", "epsilon inside the norms");
    v(position_embedding, "position_embedding", "rope or none (NoPE)");
    v(rope_base, "rope_base", "RoPE base frequency");
    v(rotary_percent, "rotary_percent", "fraction of each head's dims that RoPE rotates (0, 1]");
    v(tie_embeddings, "tie_embeddings", "share the input embedding with the LM head");
    v(init_std, "init_std", "std of the normal init; output projections use init_std / sqrt(2 * layers)");
    v(num_experts, "num_experts", "experts per MoE layer E (used by 'E' layers)");
    v(moe_top_k, "moe_top_k", "experts per token K, 1 <= K <= E");
    v(moe_ffn_hidden, "moe_ffn_hidden", "hidden width of each expert (fine-grained experts: small)");
    v(moe_shared_expert_hidden, "moe_shared_expert_hidden", "hidden width of the shared expert MLP; 0 = none");
    v(moe_shared_expert_gate, "moe_shared_expert_gate", "scale the shared expert output by sigmoid(x . w_gate) (Qwen2-MoE)");
    v(moe_router_score, "moe_router_score", "router score function");
    v(moe_router_pre_softmax, "moe_router_pre_softmax", "softmax over all experts before top-k (else top-k then softmax)");
    v(moe_router_norm_topk_prob, "moe_router_norm_topk_prob", "renormalise the K selected probs to sum 1 (pre-softmax / sigmoid)");
    v(moe_router_topk_scaling, "moe_router_topk_scaling", "multiply the gating probs by this factor");
    v(moe_load_balancing, "moe_load_balancing", "load-balancing loss: aux_loss (per micro-batch, Switch/GShard), "
                                                "seq_aux_loss (per sequence, DeepSeek-V2/V3), global_aux_loss (over the "
                                                "step's micro-batches so far and every data-parallel replica), none");
    v(moe_aux_loss_coeff, "moe_aux_loss_coeff", "coefficient of the moe_load_balancing loss (0 = off)");
    v(moe_z_loss_coeff, "moe_z_loss_coeff", "router z-loss coefficient (0 = off)");
    v(moe_expert_bias, "moe_expert_bias", "aux-loss-free balancing bias on the selection (sigmoid scores)");
    v(moe_expert_bias_update_rate, "moe_expert_bias_update_rate", "expert bias step per optimizer step");
    v(moe_router_groups, "moe_router_groups", "group-limited routing: the experts form this many contiguous groups "
                                              "(set it to parallel.ep to bound the EP ranks a token reaches); 0 = none");
    v(moe_router_group_topk, "moe_router_group_topk", "group-limited routing: groups each token chooses, by the sum "
                                                      "of its top moe_top_k / moe_router_group_topk scores in each; "
                                                      "its experts come from those groups only");
    v(moe_capacity_factor, "moe_capacity_factor", "expert capacity factor; 0 = dropless");
    v(moe_drop_policy, "moe_drop_policy", "which routed tokens an over-full expert keeps");
    v(moe_pad_to_capacity, "moe_pad_to_capacity", "pad every expert to exactly its capacity (static shapes)");
    v(mamba_num_heads, "mamba_num_heads", "Mamba2 heads H ('M' layers); d_inner = H x mamba_head_dim");
    v(mamba_head_dim, "mamba_head_dim", "channels per Mamba2 head P");
    v(mamba_groups, "mamba_groups", "Mamba2 groups G sharing B and C (contiguous blocks of H / G heads); must divide "
                                    "mamba_num_heads");
    v(mamba_state, "mamba_state", "Mamba2 state size N per group");
    v(mamba_conv_kernel, "mamba_conv_kernel", "width of the Mamba2 causal depthwise convolution");
    v(mamba_chunk, "mamba_chunk", "chunk length Q of the SSD scan (speed only; any sequence length works)");
    v(mamba_dt_min, "mamba_dt_min", "init: Δ drawn log-uniformly in [mamba_dt_min, mamba_dt_max], dt_bias its "
                                    "inverse softplus");
    v(mamba_dt_max, "mamba_dt_max", "init: upper end of Δ's log-uniform range");
    v(mamba_dt_init_floor, "mamba_dt_init_floor", "init: Δ is at least this before the inverse softplus");
    v(mamba_dt_limit_min, "mamba_dt_limit_min", "clamp Δ = softplus(dt + dt_bias) to [min, max] (time_step_limit)");
    v(mamba_dt_limit_max, "mamba_dt_limit_max", "upper end of Δ's clamp; 0 = no clamp (the default, as in HF)");
    v(precision, "precision", "GEMM precision: fp32, or bf16 (bf16 operands, fp32 accumulation; fp32 master weights, "
                              "optimizer, norms, softmaxes, router and losses)");
    v(head_chunk_rows, "head_chunk_rows", "training: the LM head and cross-entropy run over chunks of this many rows, so "
                                          "logits exist for one chunk at a time (backward recomputes each chunk's logits: "
                                          "one more head GEMM); for large vocabularies. 0 = all rows at once");
    v(head, "head", "lm: logits over the vocabulary; value: value_outputs scalars per token (score.weight "
                    "[value_outputs, D]), for reward models, attribute models and critics");
    v(value_outputs, "value_outputs", "model.head = value: values per token (1 for a reward model or critic, one per "
                                      "attribute for a SteerLM attribute model)");
    v(lora_rank, "lora_rank", "LoRA adapter rank r on the lora_targets projections; the base weights are frozen; "
                              "0 = no adapters");
    v(lora_alpha, "lora_alpha", "LoRA scale alpha: an adapter adds (alpha / r) x A^T B^T");
    v(lora_dropout, "lora_dropout", "dropout on the adapters' input during training, in [0, 1)");
    v(lora_targets, "lora_targets", "comma-separated projections that get adapters: q_proj, k_proj, v_proj, o_proj "
                                    "(attention), gate_proj, up_proj, down_proj (dense MLPs and shared experts), "
                                    "experts.gate_proj, experts.up_proj, experts.down_proj (every routed expert of the "
                                    "MoE layers, one adapter each; no lora_dropout), experts (all three)");
  }

  // Derived values (pure functions of the fields; nothing is rewritten).
  int64_t kv_channels() const { return head_dim > 0 ? head_dim : (num_heads > 0 ? d_model / num_heads : 0); }
  int64_t mamba_inner() const { return mamba_num_heads * mamba_head_dim; }               // d_inner = H P
  int64_t mamba_conv_channels() const { return mamba_inner() + 2 * mamba_groups * mamba_state; }  // x | B | C
  std::string pattern() const;
  std::vector<LayerKind> layers() const;  // parsed pattern; call after validate()
  cpu::RouterOptions router_options() const;
  std::vector<std::string> lora_target_list() const;  // lora_targets split at commas
  // Whether lora_targets names the projection (e.g. "q_proj", "experts.up_proj"; the target
  // "experts" names all three projections of the routed experts).
  bool lora_adapts(const std::string& projection) const;

  // Every problem, each naming its field and saying what would be valid. Empty = valid.
  std::vector<std::string> validate() const;
};

// Whether the target list names the projection: by its name, or "experts" for the three
// projections of the routed experts ("experts.gate_proj", "experts.up_proj", "experts.down_proj").
bool lora_targets_name(const std::vector<std::string>& targets, const std::string& projection);

}  // namespace ff
