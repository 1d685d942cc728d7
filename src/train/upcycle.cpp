#include "train/upcycle.h"

#include <cmath>
#include <set>
#include <sstream>

#include "core/rng.h"
#include "models/decoder_lm.h"

namespace ff {

namespace {
// Indices (into the pattern) of the MLP layers that become MoE layers.
std::set<size_t> chosen_layers(const std::string& pattern, const std::string& spec) {
  std::vector<size_t> mlps;
  for (size_t j = 0; j < pattern.size(); ++j)
    if (pattern[j] == '-') mlps.push_back(j);
  std::set<size_t> out;
  if (spec == "all") return {mlps.begin(), mlps.end()};
  if (spec == "every_other") {
    for (size_t i = 1; i < mlps.size(); i += 2) out.insert(mlps[i]);
    return out;
  }
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    FF_CHECK(!item.empty() && item.find_first_not_of("0123456789") == std::string::npos, "train.upcycle_layers = "
             "\"%s\": give all, every_other or MLP indices such as 0,2,5", spec.c_str());
    const size_t i = std::stoul(item);
    FF_CHECK(i < mlps.size(), "train.upcycle_layers = \"%s\": the model has %zu MLP layers (indices 0 .. %zu)",
             spec.c_str(), mlps.size(), mlps.size() - 1);
    out.insert(mlps[i]);
  }
  return out;
}

// The upcycled layers' name prefixes ("model.layers.3.mlp").
std::set<std::string> upcycled_prefixes(const ModelConfig& dense, const UpcycleOptions& o) {
  const std::string pattern = dense.pattern();
  std::set<std::string> out;
  for (size_t j : chosen_layers(pattern, o.layers)) out.insert(layer_prefix(pattern, j) + ".mlp");
  return out;
}

// Expert e's shard of the dense MLP.
int64_t shard_of(const UpcycleOptions& o, const std::string& prefix, int64_t e) {
  if (o.virtual_groups) return e % o.granularity;
  Rng rng(o.seed, "upcycle-naive-shard:" + prefix, static_cast<uint64_t>(e));
  return static_cast<int64_t>(rng.below(static_cast<uint64_t>(o.granularity)));
}
}  // namespace

UpcycleOptions UpcycleOptions::of(const TrainConfig& tc) {
  UpcycleOptions o;
  o.experts = tc.upcycle_experts;
  o.top_k = tc.upcycle_top_k;
  o.granularity = tc.upcycle_granularity;
  o.softmax_then_topk = tc.upcycle_softmax_then_topk;
  o.virtual_groups = tc.upcycle_virtual_groups;
  o.scale = tc.upcycle_scale;
  o.scale_down_only = tc.upcycle_scale_down_only;
  o.layers = tc.upcycle_layers;
  o.router_std = tc.upcycle_router_std;
  o.seed = tc.seed;
  return o;
}

ModelConfig upcycled_config(const ModelConfig& dense, const UpcycleOptions& o) {
  std::vector<std::string> e;
  const std::string pattern = dense.pattern();
  if (dense.num_experts > 0 || pattern.find('E') != std::string::npos)
    e.push_back(strprintf("the source is already an MoE (model.num_experts = %lld): upcycling starts from a dense "
                          "model", (long long)dense.num_experts));
  if (o.experts < 1) e.push_back(strprintf("train.upcycle_experts = %lld: must be >= 1", (long long)o.experts));
  if (o.granularity < 1) e.push_back(strprintf("train.upcycle_granularity = %lld: must be >= 1", (long long)o.granularity));
  if (o.granularity >= 1 && o.experts % o.granularity != 0)
    e.push_back(strprintf("train.upcycle_experts = %lld is not divisible by train.upcycle_granularity = %lld: each "
                          "virtual group is G experts holding one copy of the dense MLP", (long long)o.experts,
                          (long long)o.granularity));
  if (o.granularity >= 1 && dense.ffn_hidden % o.granularity != 0)
    e.push_back(strprintf("the dense model.ffn_hidden = %lld is not divisible by train.upcycle_granularity = %lld",
                          (long long)dense.ffn_hidden, (long long)o.granularity));
  if (o.top_k < 1 || o.top_k > o.experts)
    e.push_back(strprintf("train.upcycle_top_k = %lld: must be in [1, upcycle_experts = %lld]", (long long)o.top_k,
                          (long long)o.experts));
  if (!(o.router_std >= 0)) e.push_back(strprintf("train.upcycle_router_std = %g: must be >= 0", o.router_std));
  if (pattern.find('-') == std::string::npos) e.push_back("the source has no dense MLP layer to upcycle");
  if (!e.empty()) throw UserError("cannot upcycle:" + join_problems(e));
  ModelConfig m = dense;
  std::string moe = pattern;
  for (size_t j : chosen_layers(pattern, o.layers)) moe[j] = 'E';
  m.layer_pattern = moe;
  m.num_experts = o.experts;
  m.moe_top_k = o.top_k;
  m.moe_ffn_hidden = dense.ffn_hidden / o.granularity;
  m.moe_router_pre_softmax = o.softmax_then_topk;
  m.moe_router_score = cpu::RouterScore::softmax;
  m.moe_router_norm_topk_prob = false;
  m.moe_router_topk_scaling = 1.0;
  m.moe_shared_expert_hidden = 0;
  return m;
}

double upcycle_scale(const ModelConfig& dense, const UpcycleOptions& o, const std::string& proj) {
  if (!o.scale) return 1.0;
  const double G = static_cast<double>(o.granularity), E = static_cast<double>(o.experts),
               K = static_cast<double>(o.top_k);
  const double sigma = o.softmax_then_topk ? G * E / K : G;  // 1 / c
  if (o.scale_down_only) return proj == "down_proj" ? sigma : 1.0;
  return dense.activation == Activation::gelu ? std::sqrt(sigma) : std::cbrt(sigma);
}

bool upcycled_tensor(const ModelConfig& dense, const UpcycleOptions& o, const TensorFetch& dense_tensor,
                     const std::string& name, HostTensor& out) {
  for (const std::string& prefix : upcycled_prefixes(dense, o)) {
    if (name.rfind(prefix + ".", 0) != 0) continue;
    const std::string rest = name.substr(prefix.size() + 1);
    const int64_t D = dense.d_model, F = dense.ffn_hidden, G = o.granularity, Fe = F / G, E = o.experts;
    if (rest == "gate.weight") {  // the router [E, D]
      const int64_t R = o.virtual_groups ? E / G : E;
      Rng rng(o.seed, "upcycle-router:" + prefix);
      std::vector<float> base(static_cast<size_t>(R * D));
      for (auto& v : base) v = static_cast<float>(o.router_std) * rng.normal();
      out.shape = {E, D};
      out.data.resize(static_cast<size_t>(E * D));
      for (int64_t e = 0; e < E; ++e) {
        const int64_t row = o.virtual_groups ? e / G : e;  // each base row repeated G times
        std::copy(base.begin() + row * D, base.begin() + (row + 1) * D, out.data.begin() + e * D);
      }
      return true;
    }
    // experts.{e}.{gate_proj,up_proj,down_proj}.weight
    int64_t e = -1;
    char proj[32] = {};
    if (std::sscanf(rest.c_str(), "experts.%lld.%31[a-z_].weight", reinterpret_cast<long long*>(&e), proj) != 2)
      return false;
    HostTensor d;
    if (!dense_tensor(prefix + "." + proj + ".weight", d)) return false;
    const int64_t shard = shard_of(o, prefix, e);
    const std::string p(proj);
    const float s = static_cast<float>(upcycle_scale(dense, o, p));
    if (p == "down_proj") {  // [D, F] -> columns [shard Fe, (shard + 1) Fe)
      FF_CHECK(d.shape == std::vector<int64_t>({D, F}), "upcycling: '%s' has shape %s, expected [%lld, %lld]",
               (prefix + ".down_proj.weight").c_str(), Shape::from(d.shape).str().c_str(), (long long)D, (long long)F);
      out.shape = {D, Fe};
      out.data.resize(static_cast<size_t>(D * Fe));
      for (int64_t r = 0; r < D; ++r)
        for (int64_t c = 0; c < Fe; ++c) out.data[static_cast<size_t>(r * Fe + c)] = s * d.data[static_cast<size_t>(r * F + shard * Fe + c)];
      return true;
    }
    // gate_proj / up_proj [F, D] -> rows [shard Fe, (shard + 1) Fe)
    FF_CHECK(d.shape == std::vector<int64_t>({F, D}), "upcycling: '%s' has shape %s, expected [%lld, %lld]",
             (prefix + "." + p + ".weight").c_str(), Shape::from(d.shape).str().c_str(), (long long)F, (long long)D);
    out.shape = {Fe, D};
    out.data.assign(d.data.begin() + shard * Fe * D, d.data.begin() + (shard + 1) * Fe * D);
    for (auto& v : out.data) v *= s;
    return true;
  }
  return dense_tensor(name, out);  // not part of an upcycled layer: the dense model's own
}

}  // namespace ff
