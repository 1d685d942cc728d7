// '-': the dense MLP (layers/mlp.h) after its post_attention_layernorm.
#include "layers/mlp.h"
#include "models/kinds/kind_sizes.h"

namespace ff {
namespace {

class MlpMixer final : public Mixer {
 public:
  explicit MlpMixer(const MixerContext& x)
      : mlp_(x.params, x.compute, x.prefix + ".mlp", x.cfg.d_model, x.cfg.ffn_hidden, x.cfg.activation, x.init_std,
             x.out_init_std, x.tp, x.lora) {}
  // down_proj's input [N, F] (this TP rank's neurons; the region's rows: this CP rank's).
  void add_importance(const Mixer::Saved& s, const ImportanceSite& site, ImportanceStats& st) const override {
    const Tensor& act = static_cast<const Saved&>(s).s.act;
    const int64_t F = mlp_.hidden();
    const ImportanceRows rows{site.B, site.S, site.L, 0, site.B * site.L, {site.cp}};
    st.add(site.prefix + ".mlp", site.tp.rank() * F, F, act, 0, F, rows, true);
  }

  struct Saved final : Mixer::Saved, DecodeState {
    Mlp::Saved s;
  };
  std::unique_ptr<Mixer::Saved> new_saved() const override { return std::make_unique<Saved>(); }
  void forward(Mixer::Saved& s, float* out, const float* xn, const MixerBatch& b, Arena& arena,
               ForwardResult&) override {
    mlp_.forward(static_cast<Saved&>(s).s, out, xn, b.rows(), arena);
  }
  void backward(float* dxn, const float* dout, const float*, Mixer::Saved& s, const MixerBatch& b, float,
                Arena& scratch) override {
    mlp_.backward(dxn, dout, static_cast<Saved&>(s).s, b.rows(), false, scratch);
  }
  // Decoding keeps one record of the forward's temporaries (in the step's arena) for reuse.
  std::unique_ptr<DecodeState> new_decode_state(int64_t, int64_t) const override { return std::make_unique<Saved>(); }
  void decode(DecodeState* st, float* out, const float* xn, int64_t B, int64_t T, int64_t, Arena& scratch) override {
    mlp_.forward(static_cast<Saved*>(st)->s, out, xn, B * T, scratch);
  }

 private:
  Mlp mlp_;
};

int64_t parameters(const ModelConfig& c, int64_t) {
  return kinds::mlp_params(c, c.ffn_hidden) + kinds::mlp_lora_params(c, c.ffn_hidden);
}

RankParameters rank_parameters(const ModelConfig& c, const ParallelConfig& p) {
  return {static_cast<double>(kinds::mlp_params(c, c.ffn_hidden)) / static_cast<double>(p.tp), 0, 0};
}

double activation_bytes(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  return kinds::mlp_region_bytes(c, kinds::Rows(c, p, B), c.ffn_hidden);
}

// 6 T h F f (f = 3 for SwiGLU's gate, up and down, else 2).
double training_flops(const ModelConfig& c, int64_t sequences, int64_t S) {
  const double f = c.activation == Activation::swiglu ? 3.0 : 2.0;
  return static_cast<double>(sequences * S) * 6.0 * static_cast<double>(c.d_model) * static_cast<double>(c.ffn_hidden) * f;
}

LayerTraffic traffic(const ModelConfig& c, const ParallelConfig& p, int64_t B) { return kinds::tp_region_traffic(c, p, B); }

void layout_problems(const ModelConfig& c, const ParallelConfig& p, std::vector<std::string>& e) {
  if (c.ffn_hidden % p.tp != 0)
    e.push_back(strprintf("model.ffn_hidden = %lld is not divisible by parallel.tp = %lld", (long long)c.ffn_hidden,
                          (long long)p.tp));
}

// Llama: <block>.post_attention_layernorm and <block>.mlp.{gate,up,down}_proj (SwiGLU); Nemotron-H:
// <block>.norm and <block>.mixer.{up,down}_proj (squared ReLU). Mixtral and Qwen2-MoE blocks have
// no dense MLP.
std::vector<HfRule> hf_rules(HfFamily f, const ModelConfig&) {
  switch (f) {
    case HfFamily::llama: {
      std::vector<HfRule> r = {{"post_attention_layernorm.weight", {"post_attention_layernorm.weight"}}};
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        r.push_back({std::string("mlp.") + p + ".weight", {std::string("mlp.") + p + ".weight"}});
      return r;
    }
    case HfFamily::nemotron_h:
      return {{"norm.weight", {"post_attention_layernorm.weight"}},
              {"mixer.up_proj.weight", {"mlp.up_proj.weight"}},
              {"mixer.down_proj.weight", {"mlp.down_proj.weight"}}};
    case HfFamily::mixtral:
    case HfFamily::qwen2_moe: return {};
  }
  return {};
}

std::unique_ptr<Mixer> build(const MixerContext& x) { return std::make_unique<MlpMixer>(x); }

// Pruning (§3.5): FFN neurons by down_proj's input.
void declare_importance(const ModelConfig& c, const std::string& prefix, ImportanceStats& st) {
  st.declare(prefix + ".mlp", c.ffn_hidden);
}

LayerKeep prune_keep(const ModelConfig& c, const ImportanceStats& st, const std::string& prefix, const PruneTargets& t) {
  return {top_k_indices(st.scores(prefix + ".mlp"), t.ffn_hidden > 0 ? t.ffn_hidden : c.ffn_hidden), {}, {}};
}

bool prune_tensor(const LayerPrune& p, const TensorSource& src, const std::string& name, HostTensor& out) {
  const std::vector<int64_t>& f = p.keep.hidden;
  return cut_norm(p, "post_attention_layernorm", name, src, out) ||
         cut(p, ".mlp.gate_proj.weight", name, src, &f, &p.embedding, out) ||
         cut(p, ".mlp.up_proj.weight", name, src, &f, &p.embedding, out) ||
         cut(p, ".mlp.down_proj.weight", name, src, &p.embedding, &f, out);
}

}  // namespace

extern const LayerKindInfo kMlpKind = {'-', LayerKind::mlp, "MLP", "post_attention_layernorm", kProfileMlp, parameters,
                                       rank_parameters, activation_bytes, training_flops, traffic, layout_problems, hf_rules, build,
                                       declare_importance, prune_keep, prune_tensor};

}  // namespace ff
