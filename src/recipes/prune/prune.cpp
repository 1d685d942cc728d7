#include "recipes/prune/prune.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "models/decoder_lm.h"
#include "models/layer_kind.h"
#include "models/prune_keep.h"

namespace ff {

std::vector<std::string> prune_target_problems(const ModelConfig& c, const PruneTargets& t) {
  std::vector<std::string> e;
  const std::string pattern = c.pattern();
  auto has = [&](char k) { return pattern.find(k) != std::string::npos; };
  auto within = [&](int64_t target, int64_t size, const char* flag, const char* what) {
    if (target < 0 || target > size)
      e.push_back(strprintf("--%s %lld: must be between 1 and the model's %s (%lld); 0 keeps it whole", flag,
                            (long long)target, what, (long long)size));
  };
  within(t.d_model, c.d_model, "target_d_model", "model.d_model");
  within(t.layers, static_cast<int64_t>(pattern.size()), "target_layers", "number of layers");
  if (has('-')) within(t.ffn_hidden, c.ffn_hidden, "target_ffn_hidden", "model.ffn_hidden");
  else if (t.ffn_hidden > 0) e.push_back("--target_ffn_hidden: the model has no dense MLP layer ('-')");
  if (has('*')) {
    within(t.num_heads, c.num_heads, "target_num_heads", "model.num_heads");
    if (t.num_heads > 0 && t.num_heads % c.num_kv_heads != 0)
      e.push_back(strprintf("--target_num_heads %lld: must be a multiple of model.num_kv_heads = %lld (each query "
                            "group keeps as many heads)", (long long)t.num_heads, (long long)c.num_kv_heads));
  } else if (t.num_heads > 0) {
    e.push_back("--target_num_heads: the model has no attention layer ('*')");
  }
  if (has('M')) {
    within(t.mamba_num_heads, c.mamba_num_heads, "target_mamba_num_heads", "model.mamba_num_heads");
    within(t.mamba_head_dim, c.mamba_head_dim, "target_mamba_head_dim", "model.mamba_head_dim");
    if (t.mamba_num_heads > 0 && t.mamba_num_heads % c.mamba_groups != 0)
      e.push_back(strprintf("--target_mamba_num_heads %lld: must be a multiple of model.mamba_groups = %lld (B and C "
                            "stay whole; every group keeps as many heads)", (long long)t.mamba_num_heads,
                            (long long)c.mamba_groups));
  } else if (t.mamba_num_heads > 0 || t.mamba_head_dim > 0) {
    e.push_back("--target_mamba_*: the model has no Mamba2 layer ('M')");
  }
  if (has('E')) {
    within(t.num_experts, c.num_experts, "target_num_experts", "model.num_experts");
    within(t.moe_ffn_hidden, c.moe_ffn_hidden, "target_moe_ffn_hidden", "model.moe_ffn_hidden");
    if (t.num_experts > 0 && t.num_experts < c.moe_top_k)
      e.push_back(strprintf("--target_num_experts %lld: must be at least model.moe_top_k = %lld (each token is routed "
                            "to that many experts)", (long long)t.num_experts, (long long)c.moe_top_k));
    if (t.num_experts > 0 && c.moe_router_groups > 0 && t.num_experts % c.moe_router_groups != 0)
      e.push_back(strprintf("--target_num_experts %lld: must be a multiple of model.moe_router_groups = %lld (every "
                            "expert group keeps as many)", (long long)t.num_experts, (long long)c.moe_router_groups));
  } else if (t.num_experts > 0 || t.moe_ffn_hidden > 0) {
    e.push_back("--target_num_experts / --target_moe_ffn_hidden: the model has no MoE layer ('E')");
  }
  if (c.lora_rank > 0) e.push_back("the model has LoRA adapters: merge them first (fivefold export merges them)");
  return e;
}

namespace {

int64_t or_whole(int64_t target, int64_t size) { return target > 0 ? target : size; }

}  // namespace

PrunePlan plan_pruning(const ModelConfig& c, const ImportanceStats& stats, const PruneTargets& t) {
  const auto problems = prune_target_problems(c, t);
  if (!problems.empty()) throw UserError("cannot prune to these sizes:" + join_problems(problems));
  FF_CHECK(stats.batches() > 0, "the importance statistics saw no calibration batch");
  PrunePlan plan;
  plan.from = c;
  const std::string pattern = c.pattern();
  const auto kinds = c.layers();
  const int64_t L = static_cast<int64_t>(pattern.size());
  // Embedding channels: each layer's pre-norm output scores (after the sqrt), summed over layers.
  std::vector<double> emb(static_cast<size_t>(c.d_model), 0.0);
  std::vector<double> depth(static_cast<size_t>(L));
  for (int64_t j = 0; j < L; ++j) {
    const std::string norm = layer_prefix(pattern, static_cast<size_t>(j)) + "." + layer_kind(kinds[static_cast<size_t>(j)]).norm;
    const auto s = stats.scores(norm);
    for (size_t f = 0; f < emb.size(); ++f) emb[f] += s[f];
    depth[static_cast<size_t>(j)] = stats.mean(norm);
  }
  plan.embedding = top_k_indices(emb, or_whole(t.d_model, c.d_model));
  plan.layers = top_k_indices(depth, or_whole(t.layers, L));
  std::string kept_pattern;
  for (int64_t j : plan.layers) kept_pattern += pattern[static_cast<size_t>(j)];
  const int64_t F = or_whole(t.ffn_hidden, c.ffn_hidden), Hq = or_whole(t.num_heads, c.num_heads);
  const int64_t Hm = or_whole(t.mamba_num_heads, c.mamba_num_heads), Pm = or_whole(t.mamba_head_dim, c.mamba_head_dim);
  for (int64_t j : plan.layers)
    plan.keep.push_back(layer_kind(kinds[static_cast<size_t>(j)]).prune_keep(c, stats, layer_prefix(pattern, static_cast<size_t>(j)), t));
  ModelConfig& to = plan.to;
  to = c;
  to.d_model = static_cast<int64_t>(plan.embedding.size());
  to.head_dim = c.kv_channels();  // explicit: d_model / num_heads no longer gives it
  to.layer_pattern = kept_pattern;
  to.ffn_hidden = F;
  to.num_heads = Hq;
  to.mamba_num_heads = Hm;
  to.mamba_head_dim = Pm;
  to.num_experts = or_whole(t.num_experts, c.num_experts);
  to.moe_ffn_hidden = or_whole(t.moe_ffn_hidden, c.moe_ffn_hidden);
  const auto bad = to.validate();
  if (!bad.empty()) throw UserError("the pruned model would be invalid:" + join_problems(bad));
  return plan;
}

bool pruned_tensor(const PrunePlan& plan, const TensorSource& source, const std::string& name, HostTensor& out) {
  const std::vector<int64_t>& d = plan.embedding;
  // The model-wide tensors: the embedding and the heads' D columns, the final norm's entries.
  for (const char* w : {"model.embed_tokens.weight", "lm_head.weight", "score.weight"})
    if (name == w) {
      out = take_cols(source_tensor(source, name), d);
      return true;
    }
  if (name == "model.norm.weight" || name == "model.norm.bias") {
    out = take_rows(source_tensor(source, name), d);
    return true;
  }
  // A layer's: the kept layer whose kind names it (two layers share a block prefix when the
  // pattern alternates attention and MLP).
  const std::string from_pattern = plan.from.pattern(), to_pattern = plan.to.pattern();
  const auto kinds = plan.from.layers();
  for (size_t k = 0; k < plan.layers.size(); ++k) {
    const auto j = static_cast<size_t>(plan.layers[k]);
    const LayerPrune lp{plan.from, plan.to, layer_prefix(from_pattern, j), layer_prefix(to_pattern, k), d, plan.keep[k]};
    if (name.rfind(lp.to_prefix + ".", 0) == 0 && layer_kind(kinds[j]).prune_tensor(lp, source, name, out)) return true;
  }
  return false;
}

}  // namespace ff
