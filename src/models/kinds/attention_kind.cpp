// '*': self-attention (GQA, RoPE, CP; layers/attention.h) after its input_layernorm.
#include "layers/attention.h"
#include "models/kinds/kind_sizes.h"

namespace ff {
namespace {

using kinds::kFloat;

class AttentionMixer final : public Mixer {
 public:
  explicit AttentionMixer(const MixerContext& x)
      : attention_(x.params, x.compute, x.prefix + ".self_attn", x.cfg, x.init_std, x.out_init_std, x.tp, x.cp,
                   x.grid.config().cp_comm == CpComm::ring, x.lora),
        width_(x.cfg.num_heads / x.tp.size() * x.cfg.kv_channels()) {}

  struct Saved final : Mixer::Saved {
    Attention::Saved s;
  };
  struct State final : Mixer::DecodeState {
    Attention::KvCache kv;
  };
  std::unique_ptr<Mixer::Saved> new_saved() const override { return std::make_unique<Saved>(); }
  void forward(Mixer::Saved& s, float* out, const float* xn, const MixerBatch& b, Arena& arena,
               ForwardResult&) override {
    attention_.forward(static_cast<Saved&>(s).s, out, xn, b.positions, b.B, b.S, arena);
  }
  void backward(float* dxn, const float* dout, const float*, Mixer::Saved& s, const MixerBatch& b, float,
                Arena& scratch) override {
    attention_.backward(dxn, dout, b.positions, static_cast<Saved&>(s).s, b.B, b.S, scratch);
  }
  std::unique_ptr<DecodeState> new_decode_state(int64_t B, int64_t capacity) const override {
    auto st = std::make_unique<State>();
    st->kv = attention_.new_cache(B, capacity);
    return st;
  }
  void decode(DecodeState* st, float* out, const float* xn, int64_t B, int64_t T, int64_t start,
              Arena& scratch) override {
    attention_.forward_cached(out, xn, B, T, start, static_cast<State*>(st)->kv, scratch);
  }
  // o_proj's input [N, Hq dh] (this TP rank's heads; the region's rows: this CP rank's).
  void add_importance(const Mixer::Saved& s, const ImportanceSite& site, ImportanceStats& st) const override {
    const Tensor& o = static_cast<const Saved&>(s).s.o;
    const ImportanceRows rows{site.B, site.S, site.L, 0, site.B * site.L, {site.cp}};
    st.add(site.prefix + ".self_attn", site.tp.rank() * width_, width_, o, 0, width_, rows, true);
  }

 private:
  Attention attention_;
  int64_t width_;  // Hq dh held here
};

int64_t q_width(const ModelConfig& c) { return c.num_heads * c.kv_channels(); }
int64_t kv_width(const ModelConfig& c) { return c.num_kv_heads * c.kv_channels(); }

int64_t parameters(const ModelConfig& c, int64_t) {
  const int64_t D = c.d_model, q = q_width(c), kv = kv_width(c);
  return D * (q + 2 * kv) + q * D + kinds::lora_params(c, "q_proj", D, q) + kinds::lora_params(c, "k_proj", D, kv) +
         kinds::lora_params(c, "v_proj", D, kv) + kinds::lora_params(c, "o_proj", q, D);
}

RankParameters rank_parameters(const ModelConfig& c, const ParallelConfig& p) {
  const double D = static_cast<double>(c.d_model), q = static_cast<double>(q_width(c));
  return {(D * static_cast<double>(q_width(c) + 2 * kv_width(c)) + q * D) / static_cast<double>(p.tp), 0, 0};
}

// The fused q|k|v output, o, its operand and the log-sum-exps; under CP the gathered K/V of whole
// sequences, the query chunks and their outputs.
double activation_bytes(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  const kinds::Rows r(c, p, B);
  const double dh = static_cast<double>(c.kv_channels()), Hq = static_cast<double>(c.num_heads);
  const double Hkv = static_cast<double>(c.num_kv_heads);
  double a = (r.gathered + r.partial + r.N * dh * (Hq + 2 * Hkv) / r.T + r.N * dh * Hq / r.T + r.N * Hq / r.T) * kFloat;
  a += (r.N * r.D + r.N * dh * Hq / r.T) * r.copy;  // the input and o as operands
  if (p.cp > 1)
    a += (static_cast<double>(B * c.seq_len) * 2 * dh * Hkv / r.T + 2 * r.N * dh * Hq / r.T) * kFloat;
  return a;
}

// Megatron (specs/parallelism-and-moe.md §11): 6 T (h (Qd + 2 Kd) + Qd h) for the projections and
// 6 B S^2 Qd for the scores and their weighted sum (forward 2, backward 4).
double training_flops(const ModelConfig& c, int64_t sequences, int64_t S) {
  const double h = static_cast<double>(c.d_model), qd = static_cast<double>(q_width(c));
  const double kd = static_cast<double>(kv_width(c));
  const double T = static_cast<double>(sequences * S);
  return T * 6.0 * (h * (qd + 2.0 * kd) + qd * h) + static_cast<double>(sequences) * S * S * 6.0 * qd;
}

LayerTraffic traffic(const ModelConfig& c, const ParallelConfig& p, int64_t B) {
  LayerTraffic t = kinds::tp_region_traffic(c, p, B);
  if (p.cp > 1) {  // K/V all-gathered forward, reduce-scattered backward
    const double cp = static_cast<double>(p.cp);
    t.bytes += 2 * (cp - 1) / cp * static_cast<double>(B * c.seq_len) * 2 * static_cast<double>(kv_width(c)) /
               static_cast<double>(p.tp) * kFloat;
    t.steps += 2 * (cp - 1);
  }
  return t;
}

void layout_problems(const ModelConfig& c, const ParallelConfig& p, std::vector<std::string>& e) {
  if (c.num_heads % p.tp != 0 || c.num_kv_heads % p.tp != 0)
    e.push_back(strprintf("model.num_heads = %lld and num_kv_heads = %lld must be divisible by parallel.tp = %lld",
                          (long long)c.num_heads, (long long)c.num_kv_heads, (long long)p.tp));
}

// Llama-like: <block>.input_layernorm and <block>.self_attn.{q,k,v,o}_proj (Qwen2-MoE adds q/k/v
// biases, zero here); Nemotron-H: <block>.norm and <block>.mixer.{q,k,v,o}_proj.
std::vector<HfRule> hf_rules(HfFamily f, const ModelConfig&) {
  const bool nemotron = f == HfFamily::nemotron_h;
  const std::string mixer = nemotron ? "mixer." : "self_attn.";
  std::vector<HfRule> r = {{nemotron ? "norm.weight" : "input_layernorm.weight", {"input_layernorm.weight"}}};
  for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
    r.push_back({mixer + p + ".weight", {std::string("self_attn.") + p + ".weight"}});
  if (f == HfFamily::qwen2_moe)
    for (const char* p : {"q_proj", "k_proj", "v_proj"})
      r.push_back({mixer + p + ".bias", {std::string("self_attn.") + p + ".weight"}, HfLayout::zero_bias});
  return r;
}

std::unique_ptr<Mixer> build(const MixerContext& x) { return std::make_unique<AttentionMixer>(x); }

// Pruning (§3.5): query heads ranked within their query group by the L2 of o_proj's input
// channels; K and V are kept whole.
void declare_importance(const ModelConfig& c, const std::string& prefix, ImportanceStats& st) {
  st.declare(prefix + ".self_attn", q_width(c));
}

LayerKeep prune_keep(const ModelConfig& c, const ImportanceStats& st, const std::string& prefix, const PruneTargets& t) {
  return {attention_heads_keep(st.scores(prefix + ".self_attn"), c.num_heads, c.num_kv_heads, c.kv_channels(),
                               t.num_heads > 0 ? t.num_heads : c.num_heads), {}, {}};
}

bool prune_tensor(const LayerPrune& p, const TensorSource& src, const std::string& name, HostTensor& out) {
  const std::vector<int64_t> q = blocks_of(p.keep.hidden, p.from.kv_channels());
  const std::string a = ".self_attn.";
  return cut_norm(p, "input_layernorm", name, src, out) ||
         cut(p, a + "q_proj.weight", name, src, &q, &p.embedding, out) ||
         cut(p, a + "k_proj.weight", name, src, nullptr, &p.embedding, out) ||
         cut(p, a + "v_proj.weight", name, src, nullptr, &p.embedding, out) ||
         cut(p, a + "o_proj.weight", name, src, &p.embedding, &q, out);
}

}  // namespace

extern const LayerKindInfo kAttentionKind = {'*', LayerKind::attention, "attention", "input_layernorm", kProfileAttention,
                                             parameters, rank_parameters, activation_bytes, training_flops, traffic,
                                             layout_problems, hf_rules, build, declare_importance, prune_keep, prune_tensor};

}  // namespace ff
