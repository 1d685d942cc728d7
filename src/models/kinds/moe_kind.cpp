// 'E': the MoE layer (router, dispatcher, experts, optional shared expert; layers/moe/moe_layer.h)
// after its post_attention_layernorm.
#include <algorithm>
#include <cmath>

#include "core/bf16.h"
#include "layers/moe/moe_layer.h"
#include "models/kinds/kind_sizes.h"

namespace ff {
namespace {

using kinds::kFloat;

class MoeMixer final : public Mixer {
 public:
  explicit MoeMixer(const MixerContext& x)
      : moe_(x.params, x.compute, x.prefix + ".mlp", x.cfg, x.grid, x.init_std, x.out_init_std, x.lora),
        etp_(x.grid.etp()),
        E_(x.cfg.num_experts),
        D_(x.cfg.d_model),
        F_(x.cfg.moe_ffn_hidden),
        first_expert_(x.grid.ep().rank() * (x.cfg.num_experts / x.grid.ep().size())) {
    moe_.set_profile(x.profile);
  }

  // Expert importance (specs/methods.md §3.5): per routed expert e, the mean over the (token, e)
  // slots routed to it of ||y||_2, y [D] the expert's output row as it enters the combine (its MLP
  // output times the token's gating prob, experts.h: what the expert adds to the token). Sums from
  // the rows this rank's experts computed, counts from the kept slots this rank routed (every slot
  // is routed by one rank and computed by one EP rank); finish() adds the ranks. Under ETP each
  // rank's rows are partial sums over its ETP group: completed here, counted on ETP rank 0.
  // Padding rows (moe_pad_to_capacity) have prob 0 and output 0, so they add nothing.
  // Expert neurons: the statistic of §3.5 on fc2's input a (the scaled activation act * prob),
  // with each routed (token, expert) slot its own sample of one position (the rows arrive
  // permuted, without their sequences): acc[e F + f] += sum over e's rows of a[r, f]^2. ETP rank t
  // holds neurons [t F / ETP, (t + 1) F / ETP) of every local expert and adds those.
  void add_importance(const Mixer::Saved& s, const ImportanceSite& site, ImportanceStats& st) const override {
    const MoeLayer::Saved& m = static_cast<const Saved&>(s).s;
    add_neuron_importance(m, site.prefix + ".mlp.experts.neurons", st);
    std::vector<double> sums(static_cast<size_t>(E_), 0.0), counts(static_cast<size_t>(E_), 0.0);
    for (size_t e = 0; e < counts.size(); ++e) counts[e] = static_cast<double>(m.stats.tokens_per_expert[e]);
    const int64_t R = m.expert_out.shape[0];
    const float* y = m.expert_out.f32();
    std::vector<float> whole;
    if (etp_.size() > 1) {
      whole.assign(y, y + R * D_);
      etp_.all_reduce_sum(whole.data(), R * D_);
      y = whole.data();
    }
    if (etp_.rank() == 0) {
      int64_t r = 0;
      const auto& rows = m.dispatch.tokens_per_local_expert;
      for (size_t l = 0; l < rows.size(); ++l)
        for (int64_t i = 0; i < rows[l]; ++i, ++r) {
          double sq = 0;
          for (int64_t k = 0; k < D_; ++k) sq += static_cast<double>(y[r * D_ + k]) * y[r * D_ + k];
          sums[static_cast<size_t>(first_expert_) + l] += std::sqrt(sq);
        }
      FF_CHECK(r == R, "MoE importance: %lld expert rows, %lld in the experts' segments", (long long)R, (long long)r);
    }
    st.add_means(site.prefix + ".mlp.experts", 0, E_, sums.data(), counts.data());
  }

  struct Saved final : Mixer::Saved, DecodeState {
    MoeLayer::Saved s;
  };
  std::unique_ptr<Mixer::Saved> new_saved() const override { return std::make_unique<Saved>(); }
  void forward(Mixer::Saved& s, float* out, const float* xn, const MixerBatch& b, Arena& arena,
               ForwardResult& res) override {
    MoeLayer::Saved& m = static_cast<Saved&>(s).s;
    moe_.forward(m, out, xn, b.rows(), b.B, arena);
    const MoeStats& st = m.stats;
    res.aux_loss += st.aux_loss;
    res.z_loss += st.z_loss;
    res.routed_slots += st.routed_slots;
    res.dropped_slots += st.dropped_slots;
    res.sent_rows += st.sent_rows;
    res.expert_load.insert(res.expert_load.end(), st.tokens_per_expert.begin(), st.tokens_per_expert.end());
  }
  void backward(float* dxn, const float* dout, const float* xn, Mixer::Saved& s, const MixerBatch& b, float loss_scale,
                Arena& scratch) override {
    moe_.backward(dxn, dout, xn, static_cast<Saved&>(s).s, b.rows(), loss_scale, scratch);
  }
  // Decoding keeps one record of the forward's temporaries for reuse.
  std::unique_ptr<DecodeState> new_decode_state(int64_t, int64_t) const override { return std::make_unique<Saved>(); }
  void decode(DecodeState* st, float* out, const float* xn, int64_t B, int64_t T, int64_t, Arena& scratch) override {
    moe_.forward(static_cast<Saved*>(st)->s, out, xn, B * T, B, scratch);
  }
  MoeLayer* moe() override { return &moe_; }
  std::span<const int32_t> routed_experts(const Mixer::Saved& s) const override {
    const Router::Saved& r = static_cast<const Saved&>(s).s.router;
    if (r.topk_idx.empty()) return {};
    return {r.idx(), static_cast<size_t>(r.topk_idx.numel())};
  }

 private:
  void add_neuron_importance(const MoeLayer::Saved& m, const std::string& name, ImportanceStats& st) const {
    const int64_t Fl = F_ / etp_.size(), f0 = etp_.rank() * Fl;
    const Tensor& a = m.experts.scaled;  // [R, Fl], fp32 or bf16
    const bool bf16 = a.dtype == DType::bf16;
    const auto& rows = m.dispatch.tokens_per_local_expert;
    std::vector<double> acc(static_cast<size_t>(Fl));
    int64_t r = 0;
    for (size_t l = 0; l < rows.size(); ++l) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < rows[l]; ++i, ++r)
        for (int64_t f = 0; f < Fl; ++f) {
          const double v = bf16 ? bf16_to_float(a.bf16()[r * Fl + f]) : a.f32()[r * Fl + f];
          acc[static_cast<size_t>(f)] += v * v;
        }
      st.add_squares(name, (first_expert_ + static_cast<int64_t>(l)) * F_ + f0, Fl, acc.data());
    }
  }

  MoeLayer moe_;
  const Communicator& etp_;
  int64_t E_, D_, F_, first_expert_;
};

int64_t shared_params(const ModelConfig& c) {
  if (c.moe_shared_expert_hidden == 0) return 0;
  return kinds::mlp_params(c, c.moe_shared_expert_hidden) + (c.moe_shared_expert_gate ? c.d_model : 0);
}

// One routed expert's adapters (lora_targets experts.*).
int64_t expert_lora_params(const ModelConfig& c) {
  const int64_t D = c.d_model, F = c.moe_ffn_hidden;
  return (c.activation == Activation::swiglu ? kinds::lora_params(c, "experts.gate_proj", D, F) : 0) +
         kinds::lora_params(c, "experts.up_proj", D, F) + kinds::lora_params(c, "experts.down_proj", F, D);
}

int64_t parameters(const ModelConfig& c, int64_t experts_counted) {
  int64_t n = c.num_experts * c.d_model + experts_counted * (kinds::mlp_params(c, c.moe_ffn_hidden) + expert_lora_params(c)) +
              shared_params(c);
  if (c.moe_shared_expert_hidden > 0) n += kinds::mlp_lora_params(c, c.moe_shared_expert_hidden);
  return n;
}

// The routed experts' LoRA adapters one rank holds: per local expert and adapted projection the
// factor held whole (r D) and the one sliced over ETP (r F / ETP).
double expert_adapter_params(const ModelConfig& c, const ParallelConfig& p) {
  if (c.lora_rank == 0) return 0;
  const bool swiglu = c.activation == Activation::swiglu;
  const double projections = (swiglu && c.lora_adapts("experts.gate_proj") ? 1.0 : 0.0) +
                             (c.lora_adapts("experts.up_proj") ? 1.0 : 0.0) + (c.lora_adapts("experts.down_proj") ? 1.0 : 0.0);
  return static_cast<double>(c.num_experts / p.ep) * projections * static_cast<double>(c.lora_rank) *
         (static_cast<double>(c.d_model) + static_cast<double>(c.moe_ffn_hidden) / static_cast<double>(p.expert_tp()));
}

RankParameters rank_parameters(const ModelConfig& c, const ParallelConfig& p) {
  const double D = static_cast<double>(c.d_model), T = static_cast<double>(p.tp);
  const double shared = c.moe_shared_expert_hidden > 0
                            ? static_cast<double>(kinds::mlp_params(c, c.moe_shared_expert_hidden)) / T +
                                  (c.moe_shared_expert_gate ? D : 0)
                            : 0;
  const double experts = static_cast<double>(c.num_experts / p.ep) *
                         static_cast<double>(kinds::mlp_params(c, c.moe_ffn_hidden)) / static_cast<double>(p.expert_tp());
  return {static_cast<double>(c.num_experts) * D + shared, experts, expert_adapter_params(c, p)};
}

// Router logits, scores and routing; the dispatched rows, the experts' pre-activations and scaled
// activations (SwiGLU recomputes its activation), the shared expert's region.
double activation_bytes(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  const kinds::Rows r(c, p, B);
  const bool bf16 = c.precision == Precision::bf16, swiglu = c.activation == Activation::swiglu;
  const double E = static_cast<double>(c.num_experts), K = static_cast<double>(c.moe_top_k);
  const double etp = static_cast<double>(p.expert_tp());
  const double F = static_cast<double>(c.moe_ffn_hidden) / etp;
  const double R = r.Ns * K * etp;  // rows this rank's experts compute, on average
  double a = (r.Ns * E * 3 + r.Ns * K * 2) * kFloat;
  const double W = static_cast<double>(kinds::fc1(c, c.moe_ffn_hidden)) / etp;
  a += (2 * r.Ns * K * r.D + R * (2 * r.D + (swiglu ? 0 : F))) * kFloat;
  a += R * W * (swiglu && bf16 ? 2.0 : kFloat);      // the pre-activation (bf16 under bf16 SwiGLU)
  a += R * F * (bf16 ? 2.0 : kFloat) + R * r.D * r.copy;  // the scaled activation and the rows as operands
  if (c.moe_shared_expert_hidden > 0) a += kinds::mlp_region_bytes(c, r, c.moe_shared_expert_hidden) + r.Ns * r.D * kFloat;
  return a;
}

// 6 T h f (K F_expert + F_shared); the router's GEMM is not counted (Megatron's formula).
double training_flops(const ModelConfig& c, int64_t sequences, int64_t S) {
  const double f = c.activation == Activation::swiglu ? 3.0 : 2.0;
  return static_cast<double>(sequences * S) * 6.0 * static_cast<double>(c.d_model) * f *
         static_cast<double>(c.moe_ffn_hidden * c.moe_top_k + c.moe_shared_expert_hidden);
}

// The EP ranks one token's rows reach at most: K (one per expert) and EP; under group-limited
// routing whose groups each sit on one rank (G a multiple of EP) M = moe_router_group_topk, or
// M x EP / G when a group spans EP / G ranks.
int64_t ranks_per_token(const ModelConfig& c, int64_t ep) {
  int64_t r = std::min(c.moe_top_k, ep);
  const int64_t G = c.moe_router_groups, M = c.moe_router_group_topk;
  if (G > 0 && G % ep == 0) r = std::min(r, M);
  if (G > 0 && ep % G == 0) r = std::min(r, M * (ep / G));
  return r;
}

// The shared expert's TP region; dispatch and combine, forward and backward, of the rows of each
// token over EP (and the counts' exchange): K per token with alltoall, at most ranks_per_token
// (with their K ids and probs) with alltoall_dedup.
LayerTraffic traffic(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  LayerTraffic t = c.moe_shared_expert_hidden > 0 ? kinds::tp_region_traffic(c, p, B) : LayerTraffic{};
  if (p.ep > 1) {
    const kinds::Rows r(c, p, B);
    const double ep = static_cast<double>(p.ep), K = static_cast<double>(c.moe_top_k);
    const bool dedup = p.moe_dispatcher == MoeDispatcher::alltoall_dedup;
    const double rows = dedup ? static_cast<double>(ranks_per_token(c, p.ep)) : K;
    t.bytes += 4 * (ep - 1) / ep * r.Ns * rows * (r.D + (dedup ? 2 * K : 0.0)) * kFloat;
    t.steps += 5 * (ep - 1);
  }
  return t;
}

void layout_problems(const ModelConfig& c, const ParallelConfig& p, std::vector<std::string>& e) {
  const int64_t T = p.tp;
  if (T > 1 && !p.sequence_parallel)
    e.push_back(strprintf("MoE layers with parallel.tp = %lld need parallel.sequence_parallel = true (each TP rank then "
                          "routes its own share of the tokens)", (long long)T));
  if (c.num_experts % p.ep != 0)
    e.push_back(strprintf("model.num_experts = %lld is not divisible by parallel.ep = %lld", (long long)c.num_experts,
                          (long long)p.ep));
  if (c.moe_ffn_hidden % p.expert_tp() != 0)
    e.push_back(strprintf("model.moe_ffn_hidden = %lld is not divisible by the expert-tensor-parallel size %lld",
                          (long long)c.moe_ffn_hidden, (long long)p.expert_tp()));
  if (p.moe_dispatcher == MoeDispatcher::alltoall_dedup && c.moe_pad_to_capacity && p.ep * p.expert_tp() > 1)
    e.push_back("model.moe_pad_to_capacity = true needs parallel.moe_dispatcher = alltoall or allgather (alltoall_dedup "
                "sends tokens, not the fill-in rows of each expert)");
  if (c.moe_shared_expert_hidden > 0 && c.moe_shared_expert_hidden % T != 0)
    e.push_back(strprintf("model.moe_shared_expert_hidden = %lld is not divisible by parallel.tp = %lld",
                          (long long)c.moe_shared_expert_hidden, (long long)T));
}

// Mixtral: <block>.block_sparse_moe.{gate, experts.{E}.{w1,w3,w2}} (gate, up, down); Qwen2-MoE:
// <block>.mlp.{gate, experts.{E}.*_proj, shared_expert.*_proj, shared_expert_gate}; both after
// <block>.post_attention_layernorm. None for Llama, nor for Nemotron-H: HF's NemotronH MoE routes
// with sigmoid scores plus a score-correction bias over expert groups and always adds shared
// experts, and stores its experts one per tensor or stacked depending on the transformers
// version; fivefold does not claim that layout.
std::vector<HfRule> hf_rules(HfFamily f, const ModelConfig&) {
  std::vector<HfRule> r = {{"post_attention_layernorm.weight", {"post_attention_layernorm.weight"}}};
  if (f == HfFamily::mixtral) {
    r.push_back({"block_sparse_moe.gate.weight", {"mlp.gate.weight"}});
    r.push_back({"block_sparse_moe.experts.{E}.w1.weight", {"mlp.experts.{E}.gate_proj.weight"}});
    r.push_back({"block_sparse_moe.experts.{E}.w3.weight", {"mlp.experts.{E}.up_proj.weight"}});
    r.push_back({"block_sparse_moe.experts.{E}.w2.weight", {"mlp.experts.{E}.down_proj.weight"}});
    return r;
  }
  if (f == HfFamily::qwen2_moe) {
    r.push_back({"mlp.gate.weight", {"mlp.gate.weight"}});
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      const std::string p = proj;
      r.push_back({"mlp.experts.{E}." + p + ".weight", {"mlp.experts.{E}." + p + ".weight"}});
      r.push_back({"mlp.shared_expert." + p + ".weight", {"mlp.shared_expert." + p + ".weight"}, HfLayout::same,
                   HfWhen::shared_expert});
    }
    r.push_back({"mlp.shared_expert_gate.weight", {"mlp.shared_expert_gate.weight"}, HfLayout::same, HfWhen::shared_expert});
    return r;
  }
  return {};
}

std::unique_ptr<Mixer> build(const MixerContext& x) { return std::make_unique<MoeMixer>(x); }

// Pruning (§3.5): routed experts by their mean output norm ("<prefix>.mlp.experts", [E]), then
// each kept expert's neurons by their own scores ("<prefix>.mlp.experts.neurons", [E F], expert e's
// at e F), the same number F' in every expert, each its own set; the shared expert is kept whole.
// Under group-limited routing each of the G contiguous expert groups keeps as many experts
// (targets divisible by G, checked in prune_target_problems), so the groups stay equal and
// contiguous.
void declare_importance(const ModelConfig& c, const std::string& prefix, ImportanceStats& st) {
  st.declare_means(prefix + ".mlp.experts", c.num_experts);
  st.declare(prefix + ".mlp.experts.neurons", c.num_experts * c.moe_ffn_hidden);
}

LayerKeep prune_keep(const ModelConfig& c, const ImportanceStats& st, const std::string& prefix, const PruneTargets& t) {
  const int64_t keep = t.num_experts > 0 ? t.num_experts : c.num_experts;
  const std::vector<double> score = st.means(prefix + ".mlp.experts");
  LayerKeep k;
  k.experts = c.moe_router_groups > 0 ? top_k_within_groups(score, c.moe_router_groups, keep) : top_k_indices(score, keep);
  // hidden: kept expert k's neurons at [k F', (k + 1) F').
  const int64_t F = c.moe_ffn_hidden, F_keep = t.moe_ffn_hidden > 0 ? t.moe_ffn_hidden : F;
  const std::vector<double> neurons = st.scores(prefix + ".mlp.experts.neurons");
  for (int64_t e : k.experts) {
    const std::vector<double> of_e(neurons.begin() + e * F, neurons.begin() + (e + 1) * F);
    for (int64_t f : top_k_indices(of_e, F_keep)) k.hidden.push_back(f);
  }
  return k;
}

// Expert k of "<prefix>.mlp.experts.<k>.<rest>" (-1: not an expert tensor); rest gets ".<rest>".
int64_t expert_of(const std::string& suffix, std::string& rest) {
  const std::string head = ".mlp.experts.";
  if (suffix.rfind(head, 0) != 0) return -1;
  const size_t dot = suffix.find('.', head.size());
  if (dot == std::string::npos || dot == head.size()) return -1;
  const std::string id = suffix.substr(head.size(), dot - head.size());
  if (id.find_first_not_of("0123456789") != std::string::npos) return -1;
  rest = suffix.substr(dot);
  return std::stoll(id);
}

// The pruned layer's router rows [E', D'] (and its aux-loss-free expert bias [E'], where the
// source has one) are the kept experts' rows; pruned expert k is the source's keep.experts[k] with
// its kept neurons (gate, up rows; down columns); each expert's and the shared expert's
// projections lose the dropped embedding channels: inputs (gate, up) or outputs (down) of width D.
bool prune_tensor(const LayerPrune& p, const TensorSource& src, const std::string& name, HostTensor& out) {
  const std::vector<int64_t>& d = p.embedding;
  const std::vector<int64_t>& kept = p.keep.experts;
  if (cut_norm(p, "post_attention_layernorm", name, src, out) || cut(p, ".mlp.gate.weight", name, src, &kept, &d, out) ||
      cut(p, ".mlp.shared_expert_gate.weight", name, src, nullptr, &d, out))
    return true;
  if (name == p.to_prefix + ".mlp.gate.expert_bias") {
    if (!src(p.from_prefix + ".mlp.gate.expert_bias", out)) return false;
    out = take_rows(out, kept);
    return true;
  }
  if (name.rfind(p.to_prefix + ".mlp.", 0) != 0) return false;
  const std::string suffix = name.substr(p.to_prefix.size());
  const bool down = suffix.size() > 17 && suffix.compare(suffix.size() - 17, 17, ".down_proj.weight") == 0;
  const bool in = suffix.find(".gate_proj.weight") != std::string::npos || suffix.find(".up_proj.weight") != std::string::npos;
  if (!down && !in) return false;
  std::string rest;
  const int64_t k = expert_of(suffix, rest);
  if (k < 0) {  // the shared expert
    out = source_tensor(src, p.from_prefix + suffix);
    out = down ? take_rows(out, d) : take_cols(out, d);
    return true;
  }
  FF_CHECK(k < static_cast<int64_t>(kept.size()), "pruning: '%s' names expert %lld of a layer that keeps %zu",
           name.c_str(), (long long)k, kept.size());
  const int64_t F_keep = p.to.moe_ffn_hidden;
  const std::vector<int64_t> neurons(p.keep.hidden.begin() + k * F_keep, p.keep.hidden.begin() + (k + 1) * F_keep);
  out = source_tensor(src, p.from_prefix + ".mlp.experts." + std::to_string(kept[static_cast<size_t>(k)]) + rest);
  out = down ? take_cols(take_rows(out, d), neurons) : take_cols(take_rows(out, neurons), d);
  return true;
}

}  // namespace

extern const LayerKindInfo kMoeKind = {'E', LayerKind::moe, "MoE", "post_attention_layernorm", -1, parameters,
                                       rank_parameters, activation_bytes, training_flops, traffic, layout_problems, hf_rules, build,
                                       declare_importance, prune_keep, prune_tensor};

}  // namespace ff
