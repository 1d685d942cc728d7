#include "models/decoder_lm.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax_ce.h"

namespace ff {

std::string layer_prefix(const std::string& pattern, size_t j) {
  bool alternating = pattern.size() % 2 == 0;
  for (size_t i = 0; i < pattern.size() && alternating; ++i)
    alternating = (i % 2 == 0) == (pattern[i] == '*');
  return "model.layers." + std::to_string(alternating ? j / 2 : j);
}

DecoderLM::DecoderLM(const ModelConfig& cfg, const ParallelGrid& grid, uint64_t seed) : cfg_(cfg) {
  auto errors = cfg.validate();
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += "\n  " + e;
    FF_FAIL("invalid model config:%s", all.c_str());
  }
  const ParallelConfig& pc = grid.config();
  FF_CHECK(pc.tp == 1 && pc.cp == 1 && pc.pp == 1,
           "parallel.tp = %lld, cp = %lld, pp = %lld: tensor, context and pipeline parallelism are not implemented "
           "yet; use data (more ranks) and expert (parallel.ep) parallelism", (long long)pc.tp, (long long)pc.cp,
           (long long)pc.pp);
  const int64_t D = cfg.d_model, V = cfg.vocab_size;
  const float std0 = static_cast<float>(cfg.init_std);
  const std::string pattern = cfg.pattern();
  int64_t blocks = 0;
  for (char c : pattern) blocks += c == '*';
  // Output projections are scaled down with depth (GPT-2 / Megatron): std / sqrt(2 * blocks).
  const float out_std = std0 / std::sqrt(2.0f * static_cast<float>(std::max<int64_t>(blocks, 1)));
  const float eps = static_cast<float>(cfg.norm_eps);

  embedding_ = params_.add("model.embed_tokens.weight", Shape{V, D}, ParamInit::normal, std0);
  const auto kinds = cfg.layers();
  for (size_t j = 0; j < kinds.size(); ++j) {
    const std::string p = layer_prefix(pattern, j);
    Layer L;
    L.kind = kinds[j];
    switch (L.kind) {
      case LayerKind::attention:
        L.norm = std::make_unique<Norm>(params_, p + ".input_layernorm", D, cfg.norm, eps);
        L.attention = std::make_unique<Attention>(params_, p + ".self_attn", cfg, std0, out_std);
        break;
      case LayerKind::mlp:
        L.norm = std::make_unique<Norm>(params_, p + ".post_attention_layernorm", D, cfg.norm, eps);
        L.mlp = std::make_unique<Mlp>(params_, p + ".mlp", D, cfg.ffn_hidden, cfg.activation, std0, out_std);
        break;
      case LayerKind::moe:
        L.norm = std::make_unique<Norm>(params_, p + ".post_attention_layernorm", D, cfg.norm, eps);
        L.moe = std::make_unique<MoeLayer>(params_, p + ".mlp", cfg_, grid, std0, out_std);
        break;
      case LayerKind::mamba: FF_FAIL("layer_pattern: Mamba layers are not implemented yet");
    }
    layers_.push_back(std::move(L));
  }
  final_norm_ = std::make_unique<Norm>(params_, "model.norm", D, cfg.norm, eps);
  head_ = cfg.tie_embeddings ? embedding_ : params_.add("lm_head.weight", Shape{V, D}, ParamInit::normal, std0);
  params_.allocate(seed);
  if (grid.ep().size() == 1)  // this rank holds the whole model: its size must match the formula
    FF_CHECK(params_.numel() == count_parameters(cfg), "parameter count %lld differs from the formula %lld",
             (long long)params_.numel(), (long long)count_parameters(cfg));
}

std::unique_ptr<DecoderLM::MicroBatch> DecoderLM::new_micro_batch() const {
  auto mb = std::make_unique<MicroBatch>();
  const size_t L = layers_.size();
  mb->resid.resize(L + 1);
  mb->norms.resize(L);
  mb->attention.resize(L);
  mb->mlp.resize(L);
  mb->moe.resize(L);
  return mb;
}

int64_t DecoderLM::num_moe_layers() const {
  int64_t n = 0;
  for (const auto& L : layers_) n += L.kind == LayerKind::moe;
  return n;
}

ForwardResult DecoderLM::forward(MicroBatch& mb, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S) {
  FF_CHECK(S >= 1 && S <= cfg_.seq_len, "sequence length %lld outside [1, model.seq_len = %lld]", (long long)S,
           (long long)cfg_.seq_len);
  const int64_t N = B * S, D = cfg_.d_model, V = cfg_.vocab_size;
  Arena& A = mb.arena;
  A.reset();
  mb.B = B;
  mb.S = S;
  mb.tokens = tokens;
  mb.targets = targets;
  mb.positions.resize(static_cast<size_t>(N));
  for (int64_t r = 0; r < N; ++r) mb.positions[static_cast<size_t>(r)] = static_cast<int32_t>(r % S);

  ForwardResult res;
  mb.resid[0] = A.alloc(Shape{N, D});
  cpu::embedding_forward(mb.resid[0].f32(), tokens, embedding_->value, N, D, V);
  for (size_t j = 0; j < layers_.size(); ++j) {
    Layer& L = layers_[j];
    const float* in = mb.resid[j].f32();
    mb.resid[j + 1] = A.alloc(Shape{N, D});
    float* out = mb.resid[j + 1].f32();
    L.norm->forward(mb.norms[j], in, N, A);
    const float* xn = mb.norms[j].y.f32();
    switch (L.kind) {
      case LayerKind::attention: L.attention->forward(mb.attention[j], out, xn, mb.positions.data(), B, S, A); break;
      case LayerKind::mlp: L.mlp->forward(mb.mlp[j], out, xn, N, A); break;
      case LayerKind::moe: {
        L.moe->forward(mb.moe[j], out, xn, N, A);
        const MoeStats& st = mb.moe[j].stats;
        res.aux_loss += st.aux_loss;
        res.z_loss += st.z_loss;
        res.routed_slots += st.routed_slots;
        res.dropped_slots += st.dropped_slots;
        res.expert_load.insert(res.expert_load.end(), st.tokens_per_expert.begin(), st.tokens_per_expert.end());
        break;
      }
      case LayerKind::mamba: break;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * D; ++i) out[i] += in[i];
  }
  final_norm_->forward(mb.final_norm, mb.resid[layers_.size()].f32(), N, A);
  mb.logits = A.alloc(Shape{N, V});
  cpu::linear_forward(mb.logits.f32(), mb.final_norm.y.f32(), head_->value, N, D, V);
  if (!targets) return res;

  mb.losses = A.alloc(Shape{N});
  mb.lse = A.alloc(Shape{N});
  cpu::cross_entropy_forward(mb.losses.f32(), mb.lse.f32(), mb.logits.f32(), targets, N, V);
  double sum = 0;
  int64_t valid = 0;
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] >= 0) {
      sum += mb.losses.f32()[n];
      ++valid;
    }
  mb.valid_tokens = valid;
  res.valid_tokens = valid;
  res.loss = valid > 0 ? sum / static_cast<double>(valid) : 0.0;
  return res;
}

void DecoderLM::backward(MicroBatch& mb, float loss_scale) {
  FF_CHECK(mb.targets != nullptr && !mb.losses.empty(), "backward needs a forward with targets first");
  const int64_t N = mb.B * mb.S, D = cfg_.d_model, V = cfg_.vocab_size;
  Arena& A = mb.arena;  // gradients of the residual stream live after the saved activations
  Arena& T = mb.scratch;

  // loss = mean over valid targets: dloss[n] = loss_scale / valid for valid rows.
  float* dloss = A.alloc_f32(N);
  const float g = mb.valid_tokens > 0 ? loss_scale / static_cast<float>(mb.valid_tokens) : 0.0f;
  for (int64_t n = 0; n < N; ++n) dloss[n] = mb.targets[n] >= 0 ? g : 0.0f;
  float* dlogits = mb.logits.f32();  // consumed in place
  cpu::cross_entropy_backward(dlogits, mb.logits.f32(), mb.lse.f32(), mb.targets, dloss, N, V);

  float* dxf = A.alloc_f32(N * D);
  cpu::linear_backward(dxf, head_->grad, dlogits, mb.final_norm.y.f32(), head_->value, N, D, V, false);
  float* dresid = A.alloc_f32(N * D);
  std::memset(dresid, 0, sizeof(float) * static_cast<size_t>(N * D));
  final_norm_->backward(dresid, dxf, mb.resid[layers_.size()].f32(), mb.final_norm, N);

  float* dxn = dxf;  // reuse: [N, D] gradient at each layer's normalised input
  for (size_t j = layers_.size(); j-- > 0;) {
    Layer& L = layers_[j];
    T.reset();
    const float* xn = mb.norms[j].y.f32();
    // resid[j+1] = resid[j] + f(norm(resid[j])):  d resid[j] = d resid[j+1] + norm'(f'(d resid[j+1])).
    switch (L.kind) {
      case LayerKind::attention:
        L.attention->backward(dxn, dresid, xn, mb.positions.data(), mb.attention[j], mb.B, mb.S, T);
        break;
      case LayerKind::mlp: L.mlp->backward(dxn, dresid, xn, mb.mlp[j], N, false, T); break;
      case LayerKind::moe: L.moe->backward(dxn, dresid, xn, mb.moe[j], N, loss_scale, T); break;
      case LayerKind::mamba: break;
    }
    L.norm->backward(dresid, dxn, mb.resid[j].f32(), mb.norms[j], N);
  }
  cpu::embedding_backward(embedding_->grad, dresid, mb.tokens, N, D, V);
  mb.losses = Tensor{};  // the logits were consumed; a second backward needs a new forward
}

const float* DecoderLM::logits(const MicroBatch& mb) const { return mb.logits.f32(); }

std::vector<MoeLayer*> DecoderLM::moe_layers() {
  std::vector<MoeLayer*> out;
  for (auto& L : layers_)
    if (L.moe) out.push_back(L.moe.get());
  return out;
}

void DecoderLM::end_of_step() {
  for (auto& L : layers_)
    if (L.moe) L.moe->router().update_expert_bias();
}

}  // namespace ff
