#include "models/decoder_lm.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax_ce.h"
#include "layers/vocab_parallel.h"

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
  FF_CHECK(pc.pp == 1, "parallel.pp = %lld: pipeline parallelism is not implemented yet; use data, tensor, "
           "context and expert parallelism", (long long)pc.pp);
  tp_ = TensorParallel{&grid.tp(), pc.sequence_parallel};
  cp_ = grid.cp().size() > 1 ? &grid.cp() : nullptr;
  FF_CHECK(cfg.seq_len % (2 * pc.cp) == 0, "model.seq_len = %lld is not divisible by 2 * parallel.cp = %lld (context "
           "parallelism cuts each sequence into 2 cp chunks)", (long long)cfg.seq_len, (long long)(2 * pc.cp));
  const int64_t D = cfg.d_model, V = cfg.vocab_size, T = tp_.size();
  FF_CHECK(V % T == 0, "model.vocab_size = %lld is not divisible by parallel.tp = %lld; pad the vocabulary to a "
           "multiple of tp", (long long)V, (long long)T);
  if (pc.sequence_parallel)
    FF_CHECK(cfg.seq_len / pc.cp % T == 0, "model.seq_len / parallel.cp = %lld is not divisible by parallel.tp = "
             "%lld, which sequence parallelism needs", (long long)(cfg.seq_len / pc.cp), (long long)T);
  if (T > 1 && cfg.pattern().find('E') != std::string::npos)
    FF_CHECK(pc.sequence_parallel, "MoE layers with parallel.tp = %lld need parallel.sequence_parallel = true (each "
             "TP rank then routes its own share of the tokens)", (long long)T);
  const float std0 = static_cast<float>(cfg.init_std);
  const std::string pattern = cfg.pattern();
  int64_t blocks = 0;
  for (char c : pattern) blocks += c == '*';
  // Output projections are scaled down with depth (GPT-2 / Megatron): std / sqrt(2 * blocks).
  const float out_std = std0 / std::sqrt(2.0f * static_cast<float>(std::max<int64_t>(blocks, 1)));
  const float eps = static_cast<float>(cfg.norm_eps);

  // Vocabulary-parallel embedding and LM head: TP rank t holds ids [t V/TP, (t+1) V/TP).
  const int64_t Vl = V / T, v0 = tp_.rank() * Vl;
  embedding_ = params_.add_slice("model.embed_tokens.weight", Shape{V, D}, Shape{Vl, D}, Shape{v0, 0},
                                 ParamInit::normal, std0);
  const auto kinds = cfg.layers();
  for (size_t j = 0; j < kinds.size(); ++j) {
    const std::string p = layer_prefix(pattern, j);
    Layer L;
    L.kind = kinds[j];
    switch (L.kind) {
      case LayerKind::attention:
        L.norm = std::make_unique<Norm>(params_, p + ".input_layernorm", D, cfg.norm, eps);
        L.attention = std::make_unique<Attention>(params_, p + ".self_attn", cfg, std0, out_std, tp_, cp_);
        break;
      case LayerKind::mlp:
        L.norm = std::make_unique<Norm>(params_, p + ".post_attention_layernorm", D, cfg.norm, eps);
        L.mlp = std::make_unique<Mlp>(params_, p + ".mlp", D, cfg.ffn_hidden, cfg.activation, std0, out_std, tp_);
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
  head_ = cfg.tie_embeddings ? embedding_
                             : params_.add_slice("lm_head.weight", Shape{V, D}, Shape{Vl, D}, Shape{v0, 0},
                                                 ParamInit::normal, std0);
  // A parameter every TP rank holds whole is counted (grad norm) and written (checkpoint) once.
  for (Param& prm : params_.params())
    if (prm.tp_replicated && tp_.rank() > 0) prm.replica = true;
  params_.allocate(seed, grid.dp_cp().size(), grid.edp().size());
  if (grid.ep().size() == 1 && grid.etp().size() == 1 && T == 1) {  // the whole model is here
    int64_t n = 0;
    for (const Param& prm : params_.params()) n += prm.numel();
    FF_CHECK(n == count_parameters(cfg), "parameter count %lld differs from the formula %lld", (long long)n,
             (long long)count_parameters(cfg));
  }
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
  Arena& A = mb.arena;
  A.reset();
  if (cp_) {
    // Context parallelism: keep this rank's two chunks of every sequence (context_parallel.h).
    const int P = cp_->size();
    FF_CHECK(S % (2 * P) == 0, "sequence length %lld is not divisible by 2 * parallel.cp = %d", (long long)S, 2 * P);
    const int64_t L = S / P;
    mb.local_tokens.resize(static_cast<size_t>(B * L));
    mb.local_targets.resize(targets ? static_cast<size_t>(B * L) : 0);
    mb.positions.resize(static_cast<size_t>(B * L));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < L; ++i) {
        const int64_t pos = cp_position(i, L, cp_->rank(), P);
        const auto r = static_cast<size_t>(b * L + i);
        mb.local_tokens[r] = tokens[b * S + pos];
        if (targets) mb.local_targets[r] = targets[b * S + pos];
        mb.positions[r] = static_cast<int32_t>(pos);
      }
    tokens = mb.local_tokens.data();
    targets = targets ? mb.local_targets.data() : nullptr;
    S = L;
  } else {
    mb.positions.resize(static_cast<size_t>(B * S));
    for (int64_t r = 0; r < B * S; ++r) mb.positions[static_cast<size_t>(r)] = static_cast<int32_t>(r % S);
  }
  const int64_t N = B * S, D = cfg_.d_model, V = cfg_.vocab_size;
  mb.B = B;
  mb.S = S;
  mb.tokens = tokens;
  mb.targets = targets;

  ForwardResult res;
  // The residual stream holds Nl rows here: all N, or this rank's N / TP under sequence parallelism.
  const int64_t Nl = tp_.local_rows(N), Vl = embedding_->local_shape[0], v0 = embedding_->local_offset[0];
  mb.resid[0] = A.alloc(Shape{Nl, D});
  {
    // Each vocabulary shard contributes the rows it holds (zeros elsewhere); the sum is the lookup.
    float* partial = tp_.active() ? A.alloc_f32(N * D) : mb.resid[0].f32();
    cpu::embedding_forward(partial, tokens, embedding_->value, N, D, Vl, v0, V);
    tp_.leave(mb.resid[0].f32(), partial, N, D);
  }
  for (size_t j = 0; j < layers_.size(); ++j) {
    Layer& L = layers_[j];
    const float* in = mb.resid[j].f32();
    mb.resid[j + 1] = A.alloc(Shape{Nl, D});
    float* out = mb.resid[j + 1].f32();
    L.norm->forward(mb.norms[j], in, Nl, A);
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
    for (int64_t i = 0; i < Nl * D; ++i) out[i] += in[i];
  }
  final_norm_->forward(mb.final_norm, mb.resid[layers_.size()].f32(), Nl, A);
  // LM head: column-parallel over the vocabulary; the logits stay vocabulary-sharded [N, Vl].
  mb.head_input = tp_.enter(mb.final_norm.y.f32(), N, D, A);
  mb.logits = A.alloc(Shape{N, Vl});
  cpu::linear_forward(mb.logits.f32(), mb.head_input, head_->value, N, D, Vl);
  if (!targets) return res;

  mb.losses = A.alloc(Shape{N});
  mb.lse = A.alloc(Shape{N});
  if (tp_.active())
    vocab_parallel_cross_entropy_forward(mb.losses.f32(), mb.lse.f32(), mb.logits.f32(), targets, N, Vl, v0, V,
                                         *tp_.group);
  else
    cpu::cross_entropy_forward(mb.losses.f32(), mb.lse.f32(), mb.logits.f32(), targets, N, V);
  double sum_count[2] = {0, 0};  // loss sum and valid targets, over the CP ranks' rows
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] >= 0) {
      sum_count[0] += mb.losses.f32()[n];
      sum_count[1] += 1;
    }
  if (cp_) cp_->all_reduce_sum(sum_count, 2);
  const auto valid = static_cast<int64_t>(sum_count[1]);
  mb.valid_tokens = valid;
  res.valid_tokens = valid;
  res.loss = valid > 0 ? sum_count[0] / static_cast<double>(valid) : 0.0;
  return res;
}

void DecoderLM::backward(MicroBatch& mb, float loss_scale) {
  FF_CHECK(mb.targets != nullptr && !mb.losses.empty(), "backward needs a forward with targets first");
  const int64_t N = mb.B * mb.S, D = cfg_.d_model, V = cfg_.vocab_size;
  Arena& A = mb.arena;  // gradients of the residual stream live after the saved activations
  Arena& T = mb.scratch;

  // loss = mean over valid targets: dloss[n] = loss_scale / valid for valid rows. Under context
  // parallelism each CP rank's gradients are a part of the whole and the data-parallel reduction
  // divides by DP x CP, so they are scaled by CP here (and the MoE losses' too).
  const float cp_scale = cp_ ? static_cast<float>(cp_->size()) : 1.0f;
  loss_scale *= cp_scale;
  float* dloss = A.alloc_f32(N);
  const float g = mb.valid_tokens > 0 ? loss_scale / static_cast<float>(mb.valid_tokens) : 0.0f;
  for (int64_t n = 0; n < N; ++n) dloss[n] = mb.targets[n] >= 0 ? g : 0.0f;
  const int64_t Nl = tp_.local_rows(N), Vl = embedding_->local_shape[0], v0 = embedding_->local_offset[0];
  float* dlogits = mb.logits.f32();  // consumed in place
  if (tp_.active())
    vocab_parallel_cross_entropy_backward(dlogits, mb.logits.f32(), mb.lse.f32(), mb.targets, dloss, N, Vl, v0);
  else
    cpu::cross_entropy_backward(dlogits, mb.logits.f32(), mb.lse.f32(), mb.targets, dloss, N, V);

  float* dhead_in = A.alloc_f32(N * D);  // partial over the vocabulary shards
  cpu::linear_backward(dhead_in, head_->grad, dlogits, mb.head_input, head_->value, N, D, Vl, false);
  float* dxf = A.alloc_f32(Nl * D);
  tp_.enter_backward(dxf, dhead_in, N, D, false, T);
  float* dresid = A.alloc_f32(Nl * D);
  std::memset(dresid, 0, sizeof(float) * static_cast<size_t>(Nl * D));
  final_norm_->backward(dresid, dxf, mb.resid[layers_.size()].f32(), mb.final_norm, Nl);

  float* dxn = dxf;  // reuse: [N, D] gradient at each layer's normalised input
  for (size_t j = layers_.size(); j-- > 0;) {
    Layer& L = layers_[j];
    T.reset();
    const float* xn = mb.norms[j].y.f32();
    // resid[j+1] = resid[j] + f(norm(resid[j])):  d resid[j] = d resid[j+1] + norm'(f'(d resid[j+1])).
    switch (L.kind) {
      case LayerKind::attention:
        L.attention->backward(dxn, dresid, mb.positions.data(), mb.attention[j], mb.B, mb.S, T);
        break;
      case LayerKind::mlp: L.mlp->backward(dxn, dresid, mb.mlp[j], N, false, T); break;
      case LayerKind::moe: L.moe->backward(dxn, dresid, xn, mb.moe[j], N, loss_scale, T); break;
      case LayerKind::mamba: break;
    }
    L.norm->backward(dresid, dxn, mb.resid[j].f32(), mb.norms[j], Nl);
  }
  T.reset();
  const float* dembed = tp_.leave_backward(dresid, N, D, T);
  cpu::embedding_backward(embedding_->grad, dembed, mb.tokens, N, D, Vl, v0, V);
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
