#include "layers/model_config.h"

#include "core/check.h"

namespace ff {

namespace {
constexpr EnumName<Activation> kActivations[] = {
    {Activation::swiglu, "swiglu"}, {Activation::squared_relu, "squared_relu"}, {Activation::gelu, "gelu"}};
constexpr EnumName<NormKind> kNorms[] = {{NormKind::rmsnorm, "rmsnorm"}, {NormKind::layernorm1p, "layernorm1p"}};
constexpr EnumName<PositionEmbedding> kPositions[] = {{PositionEmbedding::rope, "rope"},
                                                      {PositionEmbedding::none, "none"}};
constexpr EnumName<Precision> kPrecisions[] = {{Precision::fp32, "fp32"}, {Precision::bf16, "bf16"}};
constexpr EnumName<HeadKind> kHeads[] = {{HeadKind::lm, "lm"}, {HeadKind::value, "value"}};
constexpr EnumName<cpu::RouterScore> kScores[] = {{cpu::RouterScore::softmax, "softmax"},
                                                  {cpu::RouterScore::sigmoid, "sigmoid"}};
constexpr EnumName<LoadBalancing> kBalancing[] = {{LoadBalancing::aux_loss, "aux_loss"},
                                                  {LoadBalancing::seq_aux_loss, "seq_aux_loss"},
                                                  {LoadBalancing::global_aux_loss, "global_aux_loss"},
                                                  {LoadBalancing::none, "none"}};
constexpr EnumName<cpu::DropPolicy> kPolicies[] = {{cpu::DropPolicy::probs, "probs"},
                                                   {cpu::DropPolicy::position, "position"}};
}  // namespace

std::span<const EnumName<Activation>> enum_names(Activation) { return kActivations; }
std::span<const EnumName<NormKind>> enum_names(NormKind) { return kNorms; }
std::span<const EnumName<PositionEmbedding>> enum_names(PositionEmbedding) { return kPositions; }
std::span<const EnumName<Precision>> enum_names(Precision) { return kPrecisions; }
std::span<const EnumName<HeadKind>> enum_names(HeadKind) { return kHeads; }
std::span<const EnumName<LoadBalancing>> enum_names(LoadBalancing) { return kBalancing; }
}  // namespace ff
namespace ff::cpu {
std::span<const EnumName<RouterScore>> enum_names(RouterScore) { return kScores; }
std::span<const EnumName<DropPolicy>> enum_names(DropPolicy) { return kPolicies; }
}  // namespace ff::cpu

namespace ff {

std::string ModelConfig::pattern() const {
  if (!layer_pattern.empty()) return layer_pattern;
  std::string p;
  for (int64_t i = 0; i < num_layers; ++i) p += num_experts > 0 ? "*E" : "*-";
  return p;
}

std::vector<LayerKind> ModelConfig::layers() const {
  std::vector<LayerKind> out;
  for (char c : pattern()) {
    switch (c) {
      case '*': out.push_back(LayerKind::attention); break;
      case '-': out.push_back(LayerKind::mlp); break;
      case 'E': out.push_back(LayerKind::moe); break;
      case 'M': out.push_back(LayerKind::mamba); break;
      default: FF_FAIL("layer_pattern: unknown layer character '%c'", c);
    }
  }
  return out;
}

std::vector<std::string> ModelConfig::lora_target_list() const {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= lora_targets.size()) {
    const size_t end = std::min(lora_targets.find(',', start), lora_targets.size());
    std::string t = lora_targets.substr(start, end - start);
    t.erase(0, t.find_first_not_of(" \t"));
    t.erase(t.find_last_not_of(" \t") + 1);
    if (!t.empty()) out.push_back(t);
    start = end + 1;
  }
  return out;
}

bool lora_targets_name(const std::vector<std::string>& targets, const std::string& projection) {
  for (const std::string& t : targets)
    if (t == projection || (t == "experts" && projection.rfind("experts.", 0) == 0)) return true;
  return false;
}

bool ModelConfig::lora_adapts(const std::string& projection) const {
  return lora_rank > 0 && lora_targets_name(lora_target_list(), projection);
}

cpu::RouterOptions ModelConfig::router_options() const {
  cpu::RouterOptions o;
  o.num_experts = num_experts;
  o.top_k = moe_top_k;
  o.score = moe_router_score;
  o.pre_softmax = moe_router_pre_softmax;
  o.norm_topk_prob = moe_router_norm_topk_prob;
  o.topk_scaling_factor = static_cast<float>(moe_router_topk_scaling);
  o.num_groups = moe_router_groups;
  o.group_topk = moe_router_group_topk;
  return o;
}

// Group-limited routing: G groups of E / G experts, M chosen per token, K experts among theirs.
// One problem, one message: a later rule is only checked when the earlier ones hold.
namespace {
void router_group_problems(const ModelConfig& c, std::vector<std::string>& e) {
  const long long E = c.num_experts, K = c.moe_top_k, G = c.moe_router_groups, M = c.moe_router_group_topk;
  if (G < 0 || M < 0) {
    e.push_back(strprintf("model.moe_router_groups = %lld, moe_router_group_topk = %lld: must be >= 0 (0 = no groups)", G, M));
  } else if (G == 0) {
    if (M > 0)
      e.push_back(strprintf("model.moe_router_group_topk = %lld needs moe_router_groups > 0 (the number of expert groups)", M));
  } else if (E <= 0 || K < 1 || K > E) {
    return;  // reported above
  } else if (E % G != 0) {
    e.push_back(strprintf("model.moe_router_groups = %lld does not divide num_experts = %lld: the experts are split into "
                          "equal contiguous groups", G, E));
  } else if (M == 0) {
    e.push_back(strprintf("model.moe_router_group_topk = 0 with moe_router_groups = %lld: set how many groups each token "
                          "chooses (1 .. %lld)", G, G));
  } else if (M > G) {
    e.push_back(strprintf("model.moe_router_group_topk = %lld exceeds moe_router_groups = %lld: a token cannot choose more "
                          "groups than there are", M, G));
  } else if (K > M * (E / G)) {
    e.push_back(strprintf("model.moe_top_k = %lld exceeds the experts of the chosen groups, moe_router_group_topk x "
                          "num_experts / moe_router_groups = %lld x %lld = %lld", K, M, E / G, M * (E / G)));
  } else if (M > K) {
    e.push_back(strprintf("model.moe_router_group_topk = %lld exceeds moe_top_k = %lld: each chosen group is scored by the "
                          "sum of its top moe_top_k / moe_router_group_topk scores, which would be none", M, K));
  }
}
}  // namespace

std::vector<std::string> ModelConfig::validate() const {
  std::vector<std::string> e;
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) e.push_back(strprintf("model.%s = %lld: must be a positive integer", name, (long long)v));
  };
  positive(vocab_size, "vocab_size");
  positive(d_model, "d_model");
  positive(num_heads, "num_heads");
  positive(num_kv_heads, "num_kv_heads");
  positive(seq_len, "seq_len");
  if (head_chunk_rows < 0)
    e.push_back(strprintf("model.head_chunk_rows = %lld: must be >= 0 (0 = all rows at once)", (long long)head_chunk_rows));
  if (head_dim < 0) e.push_back(strprintf("model.head_dim = %lld: must be >= 0 (0 = d_model / num_heads)", (long long)head_dim));
  if (layer_pattern.empty() && num_layers <= 0)
    e.push_back(strprintf("model.num_layers = %lld: must be positive (or give layer_pattern)", (long long)num_layers));
  bool has_mlp = false, has_moe = false, has_mamba = false;
  for (char c : pattern()) {
    if (c == '-') has_mlp = true;
    else if (c == 'E') has_moe = true;
    else if (c == 'M') has_mamba = true;
    else if (c != '*') e.push_back(strprintf("model.layer_pattern: unknown character '%c'; use '*' attention, '-' MLP, 'E' MoE, 'M' Mamba2", c));
  }
  if (has_mamba) {
    positive(mamba_num_heads, "mamba_num_heads");
    positive(mamba_head_dim, "mamba_head_dim");
    positive(mamba_groups, "mamba_groups");
    positive(mamba_state, "mamba_state");
    positive(mamba_conv_kernel, "mamba_conv_kernel");
    positive(mamba_chunk, "mamba_chunk");
    if (mamba_num_heads > 0 && mamba_groups > 0 && mamba_num_heads % mamba_groups != 0)
      e.push_back(strprintf("model.mamba_num_heads = %lld is not divisible by mamba_groups = %lld (each group's B and C serve "
                            "a contiguous block of heads)", (long long)mamba_num_heads, (long long)mamba_groups));
    if (!(mamba_dt_min > 0 && mamba_dt_max >= mamba_dt_min))
      e.push_back(strprintf("model.mamba_dt_min = %g, mamba_dt_max = %g: need 0 < min <= max", mamba_dt_min, mamba_dt_max));
    if (!(mamba_dt_init_floor > 0)) e.push_back(strprintf("model.mamba_dt_init_floor = %g: must be > 0", mamba_dt_init_floor));
    if (!(mamba_dt_limit_max == 0 || (mamba_dt_limit_min >= 0 && mamba_dt_limit_max > mamba_dt_limit_min)))
      e.push_back(strprintf("model.mamba_dt_limit_min = %g, mamba_dt_limit_max = %g: need 0 <= min < max, or max = 0 for no "
                            "clamp", mamba_dt_limit_min, mamba_dt_limit_max));
  }
  if (num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads != 0)
    e.push_back(strprintf("model.num_kv_heads = %lld: must divide num_heads = %lld", (long long)num_kv_heads, (long long)num_heads));
  if (head_dim == 0 && num_heads > 0 && d_model % num_heads != 0)
    e.push_back(strprintf("model.head_dim = 0 derives d_model / num_heads, but d_model = %lld is not divisible by num_heads = %lld; set head_dim",
                          (long long)d_model, (long long)num_heads));
  if (!(rotary_percent > 0.0 && rotary_percent <= 1.0))
    e.push_back(strprintf("model.rotary_percent = %g: must be in (0, 1]", rotary_percent));
  else if (position_embedding == PositionEmbedding::rope && kv_channels() > 0) {
    int64_t rot = static_cast<int64_t>(rotary_percent * kv_channels());
    if (rot % 2 != 0 || rot == 0)
      e.push_back(strprintf("model.rotary_percent = %g: rotates %lld of %lld head dims; that must be a positive even number",
                            rotary_percent, (long long)rot, (long long)kv_channels()));
  }
  if (!(norm_eps > 0)) e.push_back(strprintf("model.norm_eps = %g: must be > 0", norm_eps));
  if (!(init_std > 0)) e.push_back(strprintf("model.init_std = %g: must be > 0", init_std));
  if (!(rope_base > 0)) e.push_back(strprintf("model.rope_base = %g: must be > 0", rope_base));
  if (has_mlp) positive(ffn_hidden, "ffn_hidden");
  if (has_moe) {
    positive(num_experts, "num_experts");
    positive(moe_ffn_hidden, "moe_ffn_hidden");
    if (moe_top_k < 1 || (num_experts > 0 && moe_top_k > num_experts))
      e.push_back(strprintf("model.moe_top_k = %lld: must be in [1, num_experts = %lld]", (long long)moe_top_k, (long long)num_experts));
    if (moe_shared_expert_hidden < 0)
      e.push_back(strprintf("model.moe_shared_expert_hidden = %lld: must be >= 0 (0 = none)", (long long)moe_shared_expert_hidden));
    if (moe_shared_expert_gate && moe_shared_expert_hidden == 0)
      e.push_back("model.moe_shared_expert_gate = true needs moe_shared_expert_hidden > 0");
    if (moe_capacity_factor < 0)
      e.push_back(strprintf("model.moe_capacity_factor = %g: must be >= 0 (0 = dropless)", moe_capacity_factor));
    if (moe_pad_to_capacity && moe_capacity_factor == 0)
      e.push_back("model.moe_pad_to_capacity = true needs moe_capacity_factor > 0");
    if (moe_expert_bias && moe_router_score != cpu::RouterScore::sigmoid)
      e.push_back("model.moe_expert_bias = true needs moe_router_score = sigmoid (aux-loss-free balancing)");
    if (moe_router_pre_softmax && moe_router_score != cpu::RouterScore::softmax)
      e.push_back("model.moe_router_pre_softmax = true only applies to moe_router_score = softmax");
    if (moe_aux_loss_coeff < 0) e.push_back(strprintf("model.moe_aux_loss_coeff = %g: must be >= 0", moe_aux_loss_coeff));
    if (moe_z_loss_coeff < 0) e.push_back(strprintf("model.moe_z_loss_coeff = %g: must be >= 0", moe_z_loss_coeff));
    if (!(moe_router_topk_scaling > 0)) e.push_back(strprintf("model.moe_router_topk_scaling = %g: must be > 0", moe_router_topk_scaling));
    router_group_problems(*this, e);
  }
  if (value_outputs < 1) e.push_back(strprintf("model.value_outputs = %lld: must be >= 1", (long long)value_outputs));
  if (head == HeadKind::value && tie_embeddings)
    e.push_back("model.tie_embeddings = true needs the LM head; a value head (model.head = value) has its own weight");
  if (lora_rank < 0) e.push_back(strprintf("model.lora_rank = %lld: must be >= 0 (0 = no adapters)", (long long)lora_rank));
  if (!(lora_dropout >= 0 && lora_dropout < 1))
    e.push_back(strprintf("model.lora_dropout = %g: must be in [0, 1)", lora_dropout));
  if (lora_rank > 0) {
    if (!(lora_alpha > 0)) e.push_back(strprintf("model.lora_alpha = %g: must be > 0", lora_alpha));
    const auto targets = lora_target_list();
    if (targets.empty()) e.push_back("model.lora_targets is empty: name the projections that get adapters");
    const std::string p = pattern();
    const bool attention = p.find('*') != std::string::npos, moe = p.find('E') != std::string::npos;
    const bool mlp = p.find('-') != std::string::npos || (moe && moe_shared_expert_hidden > 0);
    const bool swiglu = activation == Activation::swiglu, mamba = p.find('M') != std::string::npos;
    bool expert_targets = false;
    for (const auto& t : targets) {
      const bool attn_t = t == "q_proj" || t == "k_proj" || t == "v_proj" || t == "o_proj";
      const bool mlp_t = t == "up_proj" || t == "down_proj" || (t == "gate_proj" && swiglu);
      const bool expert_t = t == "experts" || t == "experts.up_proj" || t == "experts.down_proj" ||
                            (t == "experts.gate_proj" && swiglu);
      const bool mamba_t = t == "in_proj" || t == "out_proj";
      expert_targets = expert_targets || expert_t;
      if (!attn_t && !mlp_t && !expert_t && !mamba_t)
        e.push_back(strprintf("model.lora_targets: '%s' is not a linear of this model (choose from q_proj, k_proj, "
                              "v_proj, o_proj, %sup_proj, down_proj, %sexperts.up_proj, experts.down_proj or experts "
                              "for all the routed experts' projections, in_proj, out_proj of Mamba2 layers)", t.c_str(),
                              swiglu ? "gate_proj, " : "", swiglu ? "experts.gate_proj, " : ""));
      else if ((attn_t && !attention) || (mlp_t && !mlp) || (expert_t && !moe) || (mamba_t && !mamba))
        e.push_back(strprintf("model.lora_targets: '%s': the model has no %s layer", t.c_str(),
                              attn_t ? "attention" : mlp_t ? "dense MLP or shared expert" : expert_t ? "MoE" : "Mamba2"));
    }
    // The routed experts' rows are dispatched tokens in an order that depends on the parallel
    // layout (EP, ETP, capacity), so a dropout mask per row would too: refused rather than drawn.
    if (expert_targets && moe && lora_dropout > 0)
      e.push_back(strprintf("model.lora_dropout = %g: the routed experts' adapters (lora_targets experts*) take no "
                            "dropout; set lora_dropout = 0 or leave the experts out of lora_targets", lora_dropout));
  }
  return e;
}

}  // namespace ff
