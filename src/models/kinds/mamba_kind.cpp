// 'M': the Mamba2 mixer (layers/mamba/mamba_mixer.h) after its input_layernorm (Nemotron-H).
#include <cmath>

#include "layers/mamba/mamba_mixer.h"
#include "models/kinds/kind_sizes.h"

namespace ff {
namespace {

using kinds::kFloat;

class MambaLayerMixer final : public Mixer {
 public:
  explicit MambaLayerMixer(const MixerContext& x)
      : mamba_(x.params, x.compute, x.prefix + ".mixer", x.cfg, x.init_std, x.out_init_std, x.tp, x.cp, x.lora) {
    mamba_.set_profile(x.profile);
  }

  struct Saved final : Mixer::Saved {
    MambaMixer::Saved s;
  };
  struct State final : Mixer::DecodeState {
    MambaMixer::State s;
  };
  std::unique_ptr<Mixer::Saved> new_saved() const override { return std::make_unique<Saved>(); }
  void forward(Mixer::Saved& s, float* out, const float* xn, const MixerBatch& b, Arena& arena,
               ForwardResult&) override {
    mamba_.forward(static_cast<Saved&>(s).s, out, xn, b.positions, b.B, b.S, arena);
  }
  void backward(float* dxn, const float* dout, const float*, Mixer::Saved& s, const MixerBatch& b, float,
                Arena& scratch) override {
    mamba_.backward(dxn, dout, static_cast<Saved&>(s).s, b.rows(), scratch);
  }
  std::unique_ptr<DecodeState> new_decode_state(int64_t B, int64_t) const override {
    auto st = std::make_unique<State>();
    st->s = mamba_.new_state(B);
    return st;
  }
  void decode(DecodeState* st, float* out, const float* xn, int64_t B, int64_t T, int64_t start,
              Arena& scratch) override {
    mamba_.decode(static_cast<State*>(st)->s, out, xn, B, T, start, scratch);
  }
  void add_importance(const Mixer::Saved& s, const ImportanceSite& site, ImportanceStats& st) const override {
    mamba_.add_importance(static_cast<const Saved&>(s).s, site.prefix + ".mixer", st);
  }

 private:
  MambaMixer mamba_;
};

int64_t in_proj_width(const ModelConfig& c) {
  return 2 * c.mamba_inner() + 2 * c.mamba_groups * c.mamba_state + c.mamba_num_heads;
}

// in_proj, the conv's weights and biases, dt_bias, A_log, D, the gated norm, out_proj.
int64_t base_parameters(const ModelConfig& c) {
  const int64_t D = c.d_model, di = c.mamba_inner(), Ch = c.mamba_conv_channels();
  return D * in_proj_width(c) + Ch * c.mamba_conv_kernel + Ch + 3 * c.mamba_num_heads + di + di * D;
}

// LoRA: one adapter per in_proj segment (z, x, B, C, dt) and one on out_proj.
int64_t parameters(const ModelConfig& c, int64_t) {
  const int64_t D = c.d_model, di = c.mamba_inner();
  const int64_t in_adapters = c.lora_rank > 0 && c.lora_adapts("in_proj") ? c.lora_rank * (5 * D + in_proj_width(c)) : 0;
  return base_parameters(c) + in_adapters + kinds::lora_params(c, "out_proj", di, D);
}

RankParameters rank_parameters(const ModelConfig& c, const ParallelConfig& p) {
  return {static_cast<double>(base_parameters(c)) / static_cast<double>(p.tp), 0, 0};
}

// in_proj's output, the conv's pre-activation and output, Δ, the chunk-entry states, the scan's
// output, the norm's statistics and output, and the operand copies of the input and that output.
double activation_bytes(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  const kinds::Rows r(c, p, B);
  const double T = r.T, di = static_cast<double>(c.mamba_inner()) / T, H = static_cast<double>(c.mamba_num_heads) / T;
  const double Ch = static_cast<double>(c.mamba_conv_channels()) / T, W = static_cast<double>(in_proj_width(c)) / T;
  const double S = static_cast<double>(c.seq_len / p.cp);
  const double chunks = static_cast<double>(B) * std::ceil(S / static_cast<double>(c.mamba_chunk));
  const double states = chunks * H * static_cast<double>(c.mamba_head_dim * c.mamba_state);
  const double G = static_cast<double>(c.mamba_groups) / T;
  return (r.gathered + r.partial + r.N * (W + 2 * Ch + H + 2 * di + G) + states) * kFloat + (r.N * r.D + r.N * di) * r.copy;
}

// Megatron-LM's mamba_layer_flops (megatron/training/training.py), per token forward:
// 2 D (2 di + 2 G N + H) for in_proj, 7 di N for the scan, 2 di D for out_proj; times 3 for
// forward and backward. Megatron takes di = 2 D; here di = H P, the model's own.
double training_flops(const ModelConfig& c, int64_t sequences, int64_t S) {
  const double D = static_cast<double>(c.d_model), di = static_cast<double>(c.mamba_inner());
  const double forward = 2 * D * static_cast<double>(in_proj_width(c)) + 7 * di * static_cast<double>(c.mamba_state) +
                         2 * di * D;
  return 3.0 * static_cast<double>(sequences * S) * forward;
}

// The TP region's; under CP the all-to-alls of in_proj's output and the normed output to the
// share and back, forward and backward.
LayerTraffic traffic(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  LayerTraffic t = kinds::tp_region_traffic(c, p, B);
  if (p.cp > 1) {
    const kinds::Rows r(c, p, B);
    const double cp = static_cast<double>(p.cp);
    t.bytes += 2 * (cp - 1) / cp * r.N * static_cast<double>(in_proj_width(c) + c.mamba_inner()) / r.T * kFloat;
    t.steps += 4 * (cp - 1);
  }
  return t;
}

void layout_problems(const ModelConfig& c, const ParallelConfig& p, std::vector<std::string>& e) {
  if (c.mamba_groups % p.tp != 0)
    e.push_back(strprintf("model.mamba_groups = %lld is not divisible by parallel.tp = %lld (tensor parallelism splits "
                          "the Mamba2 groups, each with its heads)", (long long)c.mamba_groups, (long long)p.tp));
  else if (c.mamba_groups % (p.tp * p.cp) != 0)
    e.push_back(strprintf("model.mamba_groups = %lld is not divisible by parallel.tp x parallel.cp = %lld: context "
                          "parallelism gives each CP rank whole Mamba2 groups (with their heads) of whole sequences",
                          (long long)c.mamba_groups, (long long)(p.tp * p.cp)));
}

// Nemotron-H (HF NemotronHMamba2Mixer): <block>.norm, then <block>.mixer.
//   in_proj.weight  [2 di + 2 G N + H, D] = in_proj_z [di] | in_proj_x [di] | in_proj_B [G N] |
//                   in_proj_C [G N] | in_proj_dt [H] (rows, in this order);
//   conv1d.weight   [Ch, 1, K] = conv1d_x [di, K] | conv1d_B [G N, K] | conv1d_C [G N, K];
//   conv1d.bias     [Ch] = conv1d_x.bias | conv1d_B.bias | conv1d_C.bias (Ch = di + 2 G N);
//   dt_bias, A_log, D [H]; norm.weight [di] (the gated norm); out_proj.weight [D, di].
// No other family has Mamba2 layers.
std::vector<HfRule> hf_rules(HfFamily f, const ModelConfig& c) {
  if (f != HfFamily::nemotron_h) return {};
  const int64_t di = c.mamba_inner(), gn = c.mamba_groups * c.mamba_state, H = c.mamba_num_heads;
  std::vector<HfRule> r = {{"norm.weight", {"input_layernorm.weight"}}};
  r.push_back({"mixer.in_proj.weight",
               {"mixer.in_proj_z.weight", "mixer.in_proj_x.weight", "mixer.in_proj_B.weight", "mixer.in_proj_C.weight",
                "mixer.in_proj_dt.weight"},
               HfLayout::concat, HfWhen::always, {di, di, gn, gn, H}});
  for (const char* t : {"weight", "bias"}) {
    const std::string s = t;
    r.push_back({"mixer.conv1d." + s, {"mixer.conv1d_x." + s, "mixer.conv1d_B." + s, "mixer.conv1d_C." + s},
                 HfLayout::concat, HfWhen::always, {di, gn, gn}, s == "weight"});
  }
  for (const char* t : {"dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"})
    r.push_back({std::string("mixer.") + t, {std::string("mixer.") + t}});
  return r;
}

std::unique_ptr<Mixer> build(const MixerContext& x) { return std::make_unique<MambaLayerMixer>(x); }

// Pruning (§3.5-3.6): heads and head channels by in_proj's x segment; group-aware by default.
void declare_importance(const ModelConfig& c, const std::string& prefix, ImportanceStats& st) {
  st.declare(prefix + ".mixer", c.mamba_inner());
}

LayerKeep prune_keep(const ModelConfig& c, const ImportanceStats& st, const std::string& prefix, const PruneTargets& t) {
  const auto s = st.scores(prefix + ".mixer");
  const int64_t H = t.mamba_num_heads > 0 ? t.mamba_num_heads : c.mamba_num_heads;
  const int64_t P = t.mamba_head_dim > 0 ? t.mamba_head_dim : c.mamba_head_dim;
  const MambaKeep k = t.group_aware ? mamba_keep_group_aware(s, c.mamba_num_heads, c.mamba_head_dim, c.mamba_groups, H, P)
                                    : mamba_keep_group_unaware(s, c.mamba_num_heads, c.mamba_head_dim, c.mamba_groups, H, P);
  return {k.heads, k.channels, {}};
}

// §3.6: with X = {h P + p : kept head h, kept channel p}, z and x rows X, B and C whole, dt rows
// of the kept heads; the conv's x channels X, its B and C whole; dt_bias, A_log, D of the kept
// heads; the norm's channels X (its groups stay G, of (H' / G) P' channels); out_proj's columns X.
bool prune_tensor(const LayerPrune& p, const TensorSource& src, const std::string& name, HostTensor& out) {
  const std::vector<int64_t>& heads = p.keep.hidden;
  std::vector<int64_t> X;
  for (int64_t h : heads)
    for (int64_t c : p.keep.channels) X.push_back(h * p.from.mamba_head_dim + c);
  const std::vector<int64_t>& d = p.embedding;
  const std::string m = ".mixer.";
  return cut_norm(p, "input_layernorm", name, src, out) || cut(p, m + "in_proj_z.weight", name, src, &X, &d, out) ||
         cut(p, m + "in_proj_x.weight", name, src, &X, &d, out) || cut(p, m + "in_proj_B.weight", name, src, nullptr, &d, out) ||
         cut(p, m + "in_proj_C.weight", name, src, nullptr, &d, out) ||
         cut(p, m + "in_proj_dt.weight", name, src, &heads, &d, out) ||
         cut(p, m + "conv1d_x.weight", name, src, &X, nullptr, out) || cut(p, m + "conv1d_x.bias", name, src, &X, nullptr, out) ||
         cut(p, m + "conv1d_B.weight", name, src, nullptr, nullptr, out) ||
         cut(p, m + "conv1d_B.bias", name, src, nullptr, nullptr, out) ||
         cut(p, m + "conv1d_C.weight", name, src, nullptr, nullptr, out) ||
         cut(p, m + "conv1d_C.bias", name, src, nullptr, nullptr, out) || cut(p, m + "dt_bias", name, src, &heads, nullptr, out) ||
         cut(p, m + "A_log", name, src, &heads, nullptr, out) || cut(p, m + "D", name, src, &heads, nullptr, out) ||
         cut(p, m + "norm.weight", name, src, &X, nullptr, out) || cut(p, m + "out_proj.weight", name, src, &d, &X, out);
}

}  // namespace

extern const LayerKindInfo kMambaKind = {'M', LayerKind::mamba, "Mamba2", "input_layernorm", -1, parameters,
                                         rank_parameters, activation_bytes, training_flops, traffic, layout_problems, hf_rules, build,
                                         declare_importance, prune_keep, prune_tensor};

}  // namespace ff
