#include "models/decoder_lm.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax_ce.h"
#include "layers/context_parallel.h"
#include "layers/vocab_parallel.h"
#include "models/config.h"

namespace ff {

std::vector<std::string> layout_problems(const ModelConfig& cfg, const ParallelConfig& pc) {
  std::vector<std::string> e;
  const int64_t T = pc.tp, layers = static_cast<int64_t>(cfg.pattern().size());
  auto need = [&](bool ok, std::string msg) {
    if (!ok) e.push_back(std::move(msg));
  };
  need(cfg.vocab_size % T == 0, strprintf("model.vocab_size = %lld is not divisible by parallel.tp = %lld; pad the "
                                          "vocabulary to a multiple of tp", (long long)cfg.vocab_size, (long long)T));
  need(pc.cp == 1 || cfg.seq_len % (2 * pc.cp) == 0, strprintf("model.seq_len = %lld is not divisible by 2 * parallel.cp = %lld "
                                                 "(context parallelism cuts each sequence into 2 cp chunks)",
                                                 (long long)cfg.seq_len, (long long)(2 * pc.cp)));
  if (pc.sequence_parallel)
    need(cfg.seq_len / pc.cp % T == 0, strprintf("model.seq_len / parallel.cp = %lld is not divisible by parallel.tp "
                                                 "= %lld, which sequence parallelism needs",
                                                 (long long)(cfg.seq_len / pc.cp), (long long)T));
  need(layers >= pc.pp * pc.virtual_stages,
       strprintf("the model has %lld layers, fewer than parallel.pp x parallel.virtual_stages = %lld pipeline stages",
                 (long long)layers, (long long)(pc.pp * pc.virtual_stages)));
  // Each kind of the pattern, once.
  std::string seen;
  for (char c : cfg.pattern()) {
    if (seen.find(c) != std::string::npos) continue;
    seen += c;
    if (const LayerKindInfo* k = layer_kind_of(c)) k->layout_problems(cfg, pc, e);
  }
  return e;
}

std::string layer_prefix(const std::string& pattern, size_t j) {
  bool alternating = pattern.size() % 2 == 0;
  for (size_t i = 0; i < pattern.size() && alternating; ++i)
    alternating = (i % 2 == 0) == (pattern[i] == '*');
  return "model.layers." + std::to_string(alternating ? j / 2 : j);
}

DecoderLM::DecoderLM(const ModelConfig& cfg, const ParallelGrid& grid, uint64_t seed,
                     const std::vector<std::string>& frozen, const TrainingExtras& extras)
    : cfg_(cfg), compute_(cfg.precision) {
  auto errors = cfg.validate();
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("invalid model config:%s", all.c_str());
  }
  const ParallelConfig& pc = grid.config();
  auto problems = layout_problems(cfg, pc);
  if (!problems.empty()) {
    const std::string all = join_problems(problems);
    FF_FAIL("this model cannot use this parallel layout:%s", all.c_str());
  }
  tp_ = TensorParallel{&grid.tp(), pc.sequence_parallel};
  pp_rank_ = grid.pp().rank();
  pp_size_ = grid.pp().size();
  chunks_ = pc.virtual_stages;
  cp_ = grid.cp().size() > 1 ? &grid.cp() : nullptr;
  const int64_t D = cfg.d_model, V = cfg.vocab_size, T = tp_.size();
  const float std0 = static_cast<float>(cfg.init_std);
  const std::string pattern = cfg.pattern();
  int64_t blocks = 0;
  for (char c : pattern) blocks += c == '*';
  // Output projections are scaled down with depth (GPT-2 / Megatron): std / sqrt(2 * blocks).
  const float out_std = std0 / std::sqrt(2.0f * static_cast<float>(std::max<int64_t>(blocks, 1)));
  const float eps = static_cast<float>(cfg.norm_eps);

  // Vocabulary-parallel embedding and LM head: TP rank t holds ids [t V/TP, (t+1) V/TP). The
  // embedding lives on the first pipeline stage, the final norm and the head on the last.
  const int64_t Vl = V / T, v0 = tp_.rank() * Vl;
  if (chunk_range(0).first)
    embedding_ = params_.add_slice("model.embed_tokens.weight", Shape{V, D}, Shape{Vl, D}, Shape{v0, 0},
                                   ParamInit::normal, std0);
  const LoraOptions lora = lora_options(cfg, seed);
  const auto kinds = cfg.layers();
  std::vector<bool> held(kinds.size(), false);
  for (int64_t c = 0; c < chunks_; ++c)
    for (int64_t j = chunk_range(c).begin; j < chunk_range(c).end; ++j) held[static_cast<size_t>(j)] = true;
  for (size_t j = 0; j < kinds.size(); ++j) {
    const std::string p = layer_prefix(pattern, j);
    Layer L;
    L.kind = &layer_kind(kinds[j]);
    if (held[j]) {  // else another pipeline stage's layer
      L.norm = std::make_unique<Norm>(params_, p + "." + L.kind->norm, D, cfg.norm, eps);
      L.mixer = L.kind->build(MixerContext{params_, compute_, cfg_, grid, tp_, cp_, lora, p, std0, out_std, &profile_});
    }
    layers_.push_back(std::move(L));
  }
  if (chunk_range(chunks_ - 1).last) {
    final_norm_ = std::make_unique<Norm>(params_, "model.norm", D, cfg.norm, eps);
    if (cfg.head == HeadKind::value) {
      value_head_ = std::make_unique<ValueHead>(params_, D, cfg.value_outputs, std0);
    } else if (!cfg.tie_embeddings) {
      head_ = params_.add_slice("lm_head.weight", Shape{V, D}, Shape{Vl, D}, Shape{v0, 0}, ParamInit::normal, std0);
    } else if (embedding_) {
      head_ = embedding_;
    } else {
      // Tied across pipeline stages: the last stage keeps a copy of the embedding (same name, same
      // initial values), counted and written once; their gradients are summed before each step.
      head_ = params_.add_slice("model.embed_tokens.weight", Shape{V, D}, Shape{Vl, D}, Shape{v0, 0},
                                ParamInit::normal, std0);
      head_->replica = true;
    }
    if (head_) lm_head_ = std::make_unique<LmHead>(head_, compute_, tp_, V, cfg.head_chunk_rows);
    if (extras.hidden_projection > 0)  // unit-variance outputs for unit-variance inputs
      projection_ = params_.add("distill.projection.weight", Shape{extras.hidden_projection, D}, ParamInit::normal,
                                1.0f / std::sqrt(static_cast<float>(D)), false);
  }
  // Middle stages hold neither copy, so whether the tied embedding trains is read from the globs.
  tied_across_stages_ = cfg.tie_embeddings && pp_size_ > 1 && cfg.lora_rank == 0 &&
                        !matches_any("model.embed_tokens.weight", frozen);
  pp_ = &grid.pp();
  // A parameter every TP rank holds whole is counted (grad norm) and written (checkpoint) once;
  // data-parallel replicas are written by the first replica.
  for (Param& prm : params_.params()) {
    if (prm.tp_replicated && tp_.rank() > 0) prm.replica = true;
    prm.data_replica = (prm.expert ? grid.edp() : grid.dp_cp()).rank() > 0;
    // The value head's weight is whole on every TP rank, with the same gradient there (every rank
    // sees every row): written once, no reduction over TP.
    // So is the distillation projection's (its input is the head's, whole rows on every TP rank).
    if (((value_head_ && &prm == value_head_->weight()) || &prm == projection_) && tp_.rank() > 0) prm.replica = true;
    // With LoRA only the adapters train (the base is frozen); frozen globs apply on top.
    prm.trainable = !matches_any(prm.name, frozen) &&
                    (cfg.lora_rank == 0 || is_adapter_name(prm.name) || is_training_only_name(prm.name));
  }
  first_replica_ = tp_.rank() == 0 && grid.dp_cp().rank() == 0;
  params_.allocate(seed, grid.dp_cp().size(), grid.edp().size());
  if (compute_.bf16()) params_.allocate_bf16_copy();
  if (grid.ep().size() == 1 && grid.etp().size() == 1 && T == 1 && pp_size_ == 1) {  // the whole model is here
    int64_t n = 0;
    for (const Param& prm : params_.params()) n += is_training_only_name(prm.name) ? 0 : prm.numel();
    FF_CHECK(n == count_parameters(cfg), "parameter count %lld differs from the formula %lld", (long long)n,
             (long long)count_parameters(cfg));
  }
}

std::unique_ptr<DecoderLM::MicroBatch> DecoderLM::new_micro_batch() const {
  auto mb = std::make_unique<MicroBatch>();
  const size_t L = layers_.size();
  mb->resid.resize(L + 1);
  mb->norms.resize(L);
  mb->mixer.resize(L);
  for (size_t j = 0; j < L; ++j)
    if (layers_[j].mixer) mb->mixer[j] = layers_[j].mixer->new_saved();
  return mb;
}

DecoderLM::ChunkRange DecoderLM::chunk_range(int64_t chunk) const {
  // Virtual stage vs = chunk P + p holds pattern layers [vs L / (P V), (vs + 1) L / (P V)).
  const int64_t L = static_cast<int64_t>(cfg_.pattern().size()), VS = pp_size_ * chunks_;
  const int64_t vs = chunk * pp_size_ + pp_rank_;
  return {vs * L / VS, (vs + 1) * L / VS, vs == 0, vs == VS - 1};
}

ForwardResult DecoderLM::forward(MicroBatch& mb, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S,
                                 const int32_t* positions) {
  FF_CHECK(pp_size_ == 1, "DecoderLM::forward runs the whole model; with pipeline stages use the pipeline executor");
  return forward_chunk(mb, 0, tokens, targets, B, S, nullptr, positions);
}

void DecoderLM::backward(MicroBatch& mb, HeadGradient g, float objective_scale, float moe_scale) {
  backward_chunk(mb, 0, nullptr, g, objective_scale, moe_scale);
}

float* DecoderLM::head_logits(MicroBatch& mb) {
  FF_CHECK(mb.targets != nullptr && !mb.head.logp.empty() && mb.head.logits.shape[0] == mb.B * mb.S,
           "head_logits: the last forward of this micro-batch had no targets, ran on another stage, or kept one "
           "chunk of logits (model.head_chunk_rows)");
  return mb.head.logits.f32();
}

const float* DecoderLM::head_hidden(const MicroBatch& mb) const {
  FF_CHECK(mb.head_in != nullptr, "head_hidden: no forward of this micro-batch on this (the last) stage");
  return projection_ ? mb.hidden_projected.f32() : mb.head_in;
}

void DecoderLM::add_hidden_gradient(float* dhead_in, const float* dhidden, MicroBatch& mb, float scale) {
  // dhidden [N, Dh] is d loss / d head_hidden, the same on every TP rank; dhead_in is a partial
  // sum over TP (entering's backward adds the ranks' shares), so each rank adds 1 / TP of it
  // (exact for a power-of-two TP, else one rounding).
  const int64_t N = mb.B * mb.S, D = cfg_.d_model, Dh = head_hidden_width();
  const float share = scale / static_cast<float>(tp_.size());
  std::vector<float> d(static_cast<size_t>(N * Dh));
  for (size_t i = 0; i < d.size(); ++i) d[i] = share * dhidden[i];
  if (!projection_) {
    for (int64_t i = 0; i < N * D; ++i) dhead_in[i] += d[static_cast<size_t>(i)];
    return;
  }
  // head_hidden = h W^T:  dh += d W;  dW += (scale dhidden)^T h, whole on every TP rank.
  cpu::linear_backward(dhead_in, nullptr, d.data(), mb.head_in, projection_->value, N, D, Dh, true);
  if (projection_->grad) {
    for (size_t i = 0; i < d.size(); ++i) d[i] = scale * dhidden[i];
    cpu::linear_backward(nullptr, projection_->grad, d.data(), mb.head_in, projection_->value, N, D, Dh, true);
  }
}

const float* DecoderLM::head_lse(const MicroBatch& mb) const {
  FF_CHECK(mb.targets != nullptr && !mb.head.lse.empty(), "head_lse: the last forward of this micro-batch had no "
           "targets or ran on another stage");
  return mb.head.lse.f32();
}

HeadRows DecoderLM::head_rows(const MicroBatch& mb) const {
  if (value_head_) {
    FF_CHECK(!mb.value.v.empty(), "head_rows: no forward of this micro-batch on this (the last) stage");
    HeadRows rows{mb.value.v.f32(), mb.targets, mb.positions.data(), mb.B, mb.S, cp_};
    rows.width = value_head_->outputs();
    return rows;
  }
  FF_CHECK(mb.targets != nullptr && !mb.head.logp.empty(),
           "target_logprobs: the last forward of this micro-batch had no targets (or was on another stage)");
  return {mb.head.logp.f32(), mb.targets, mb.positions.data(), mb.B, mb.S, cp_};
}

void DecoderLM::prepare(MicroBatch& mb, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S,
                        const int32_t* positions) {
  FF_CHECK(S >= 1 && S <= cfg_.seq_len, "sequence length %lld outside [1, model.seq_len = %lld]", (long long)S,
           (long long)cfg_.seq_len);
  Arena& A = mb.arena;
  A.reset();
  if (positions) {
    FF_CHECK(cp_ == nullptr, "packed sequences (positions restarting per example) run without context parallelism: "
             "use parallel.cp = 1 or no packing");
    for (int64_t r = 0; r < B * S; ++r)
      FF_CHECK(positions[r] >= 0 && positions[r] < cfg_.seq_len && (r % S != 0 || positions[r] == 0),
               "row %lld: position %d outside [0, model.seq_len) or a sequence not starting at 0", (long long)r,
               positions[r]);
    mb.positions.assign(positions, positions + B * S);
  } else if (cp_) {
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
  mb.B = B;
  mb.S = S;
  mb.tokens = tokens;
  mb.targets = targets;
}

int64_t DecoderLM::stream_rows(int64_t B, int64_t S) const {
  return tp_.local_rows(B * S / (cp_ ? cp_->size() : 1));
}

ForwardResult DecoderLM::forward_chunk(MicroBatch& mb, int64_t chunk, const int32_t* tokens, const int32_t* targets,
                                       int64_t B, int64_t S, const float* input, const int32_t* positions) {
  if (chunk == 0) prepare(mb, tokens, targets, B, S, positions);
  if (compute_weights_stale_ && compute_.bf16()) {
    cpu::to_bf16(params_.values_bf16(), params_.values(), params_.numel());
    compute_weights_stale_ = false;
  }
  Arena& A = mb.arena;
  B = mb.B;
  S = mb.S;
  tokens = mb.tokens;
  targets = mb.targets;
  const ChunkRange range = chunk_range(chunk);
  const int64_t N = B * S, D = cfg_.d_model, V = cfg_.vocab_size;

  ForwardResult res;
  // The residual stream holds Nl rows here: all N, or this rank's N / TP under sequence parallelism.
  const int64_t Nl = tp_.local_rows(N);
  if (range.first) {
    ProfileScope scope(&profile_, kProfileEmbedding, false);
    // Each vocabulary shard contributes the rows it holds (zeros elsewhere); the sum is the lookup.
    const int64_t Vl = embedding_->local_shape[0], v0 = embedding_->local_offset[0];
    mb.resid[0] = A.alloc(Shape{Nl, D});
    float* partial = tp_.active() ? A.alloc_f32(N * D) : mb.resid[0].f32();
    cpu::embedding_forward(partial, tokens, embedding_->value, N, D, Vl, v0, V);
    tp_.leave(mb.resid[0].f32(), partial, N, D);
  } else {
    FF_CHECK(input != nullptr, "pipeline chunk %lld needs the previous stage's activation", (long long)chunk);
    mb.resid[static_cast<size_t>(range.begin)].ptr = const_cast<float*>(input);  // owned by the executor
    mb.resid[static_cast<size_t>(range.begin)].shape = Shape{Nl, D};
  }
  for (size_t j = static_cast<size_t>(range.begin); j < static_cast<size_t>(range.end); ++j) {
    Layer& L = layers_[j];
    const float* in = mb.resid[j].f32();
    mb.resid[j + 1] = A.alloc(Shape{Nl, D});
    float* out = mb.resid[j + 1].f32();
    {
      ProfileScope scope(&profile_, kProfileNorm, false);
      L.norm->forward(mb.norms[j], in, Nl, A);
    }
    {
      ProfileScope scope(L.kind->profile_slot >= 0 ? &profile_ : nullptr, L.kind->profile_slot, false);
      L.mixer->forward(*mb.mixer[j], out, mb.norms[j].y.f32(), MixerBatch{B, S, mb.positions.data()}, A, res);
    }
    ProfileScope scope(&profile_, kProfileNorm, false);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < Nl * D; ++i) out[i] += in[i];
  }
  if (!range.last) return res;
  ProfileScope head_scope(&profile_, kProfileHead, false);
  final_norm_->forward(mb.final_norm, mb.resid[layers_.size()].f32(), Nl, A);
  // LM head: column-parallel over the vocabulary; the logits stay vocabulary-sharded [N, Vl].
  const float* full = tp_.enter(mb.final_norm.y.f32(), N, D, A);
  mb.head_in = full;
  if (projection_) {
    const int64_t Dt = projection_->global_shape[0];
    mb.hidden_projected = A.alloc(Shape{N, Dt});
    cpu::linear_forward(mb.hidden_projected.f32(), full, projection_->value, N, D, Dt);
  }
  if (value_head_) {
    value_head_->forward(mb.value, full, N, A);
    return res;
  }
  lm_head_->forward(mb.head, compute_.operand(full, N, D, A), targets, N, A);
  return res;
}

std::unique_ptr<DecoderLM::Decoder> DecoderLM::new_decoder(int64_t B, int64_t capacity) const {
  FF_CHECK(cp_ == nullptr, "generation runs without context parallelism: use parallel.cp = 1");
  FF_CHECK(cfg_.head == HeadKind::lm, "a model with a value head (model.head = value) scores text; it does not "
           "generate");
  FF_CHECK(B >= 1 && B % tp_.size() == 0, "a decoder of %lld sequences: with tensor parallelism the batch must be a "
           "multiple of parallel.tp = %d", (long long)B, tp_.size());
  FF_CHECK(capacity >= 1 && capacity <= cfg_.seq_len, "a KV cache of %lld positions: must be in [1, model.seq_len = %lld]",
           (long long)capacity, (long long)cfg_.seq_len);
  auto d = std::make_unique<Decoder>();
  d->B = B;
  d->capacity = capacity;
  d->state.resize(layers_.size());
  for (size_t j = 0; j < layers_.size(); ++j)
    if (layers_[j].mixer) d->state[j] = layers_[j].mixer->new_decode_state(B, capacity);
  return d;
}

const float* DecoderLM::decode_chunk(Decoder& d, int64_t chunk, const int32_t* tokens, int64_t T, const float* input) {
  FF_CHECK(T >= 1 && d.length + T <= d.capacity, "decoding %lld positions after %lld: the cache holds %lld",
           (long long)T, (long long)d.length, (long long)d.capacity);
  TrainingMode evaluation(compute_, false);
  if (compute_weights_stale_ && compute_.bf16()) {
    cpu::to_bf16(params_.values_bf16(), params_.values(), params_.numel());
    compute_weights_stale_ = false;
  }
  Arena& A = d.arena;
  if (chunk == 0) A.reset();
  const ChunkRange range = chunk_range(chunk);
  const int64_t B = d.B, N = B * T, D = cfg_.d_model, V = cfg_.vocab_size, Nl = tp_.local_rows(N);
  float* h = A.alloc_f32(Nl * D);
  if (range.first) {
    const int64_t Vl = embedding_->local_shape[0], v0 = embedding_->local_offset[0];
    float* partial = tp_.active() ? A.alloc_f32(N * D) : h;
    cpu::embedding_forward(partial, tokens, embedding_->value, N, D, Vl, v0, V);
    tp_.leave(h, partial, N, D);
  } else {
    FF_CHECK(input != nullptr, "pipeline chunk %lld needs the previous stage's activation", (long long)chunk);
    std::memcpy(h, input, sizeof(float) * static_cast<size_t>(Nl * D));
  }
  float* out = A.alloc_f32(Nl * D);
  for (size_t j = static_cast<size_t>(range.begin); j < static_cast<size_t>(range.end); ++j) {
    Layer& L = layers_[j];
    L.norm->forward(d.norm, h, Nl, A);
    L.mixer->decode(d.state[j].get(), out, d.norm.y.f32(), B, T, d.length, A);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < Nl * D; ++i) h[i] += out[i];
  }
  if (!range.last) return h;
  // The head on each sequence's newest row only: [B, D] -> logits [B, V / TP] -> gathered [B, V].
  final_norm_->forward(d.norm, h, Nl, A);
  const float* full = tp_.enter(d.norm.y.f32(), N, D, A);
  float* last = A.alloc_f32(B * D);
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(last + b * D, full + (b * T + T - 1) * D, sizeof(float) * static_cast<size_t>(D));
  const int64_t Vl = head_->local_shape[0];
  float* shard = A.alloc_f32(B * Vl);
  compute_.linear_forward(shard, compute_.operand(last, B, D, A), Weight::of(*head_), B, D, Vl);
  d.logits.resize(static_cast<size_t>(B * V));
  if (!tp_.active()) {
    std::memcpy(d.logits.data(), shard, sizeof(float) * static_cast<size_t>(B * V));
  } else {
    float* all = A.alloc_f32(B * V);  // [TP][B][Vl]
    tp_.group->all_gather(all, shard, B * Vl);
    for (int r = 0; r < tp_.size(); ++r)
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(d.logits.data() + b * V + r * Vl, all + (r * B + b) * Vl, sizeof(float) * static_cast<size_t>(Vl));
  }
  return h;
}

const float* DecoderLM::chunk_output(const MicroBatch& mb, int64_t chunk) const {
  return mb.resid[static_cast<size_t>(chunk_range(chunk).end)].f32();
}

const float* DecoderLM::backward_chunk(MicroBatch& mb, int64_t chunk, const float* dout, HeadGradient hg,
                                       float objective_scale, float moe_scale) {
  const ChunkRange range = chunk_range(chunk);
  const int64_t N = mb.B * mb.S, D = cfg_.d_model, V = cfg_.vocab_size, Nl = tp_.local_rows(N);
  Arena& A = mb.arena;  // gradients of the residual stream live after the saved activations
  Arena& T = mb.scratch;
  // Under context parallelism each CP rank's gradients are a part of the whole and the
  // data-parallel reduction divides by DP x CP, so they are scaled by CP here (the MoE losses' too).
  const float cp_scale = cp_ ? static_cast<float>(cp_->size()) : 1.0f;
  const float loss_scale = moe_scale * cp_scale;
  float* dresid = A.alloc_f32(Nl * D);
  if (!range.last) {
    FF_CHECK(dout != nullptr, "pipeline chunk %lld needs the next stage's gradient", (long long)chunk);
    std::memcpy(dresid, dout, sizeof(float) * static_cast<size_t>(Nl * D));
  } else {
    ProfileScope scope(&profile_, kProfileHead, true);
    FF_CHECK(hg.dlogp != nullptr || hg.dlogits != nullptr, "the last pipeline stage's backward needs the objective's "
             "gradient");
    T.reset();
    const float g = objective_scale * cp_scale;
    float* dhead_in = A.alloc_f32(N * D);  // partial over the vocabulary shards
    if (value_head_) {
      FF_CHECK(hg.dlogp != nullptr, "a value head's backward takes d loss / d value per row");
      const int64_t K = value_head_->outputs();
      float* scaled = T.alloc_f32(N * K);
      for (int64_t i = 0; i < N * K; ++i) scaled[i] = g * hg.dlogp[i];
      value_head_->backward(dhead_in, scaled, mb.value, N);
      // Every TP rank holds the whole gradient of the head's input, which entering's backward sums
      // over TP: each rank contributes 1 / TP of it (exact: TP is a power of two here or the
      // division rounds once).
      if (tp_.size() > 1) {
        const float share = 1.0f / static_cast<float>(tp_.size());
        for (int64_t i = 0; i < N * D; ++i) dhead_in[i] *= share;
      }
    } else if (hg.dlogp) {
      float* scaled = T.alloc_f32(N);
      for (int64_t n = 0; n < N; ++n) scaled[n] = g * hg.dlogp[n];
      lm_head_->backward(dhead_in, scaled, mb.head, N, T);
    } else {
      const int64_t n_logits = N * lm_head_->vocab_local();
      float* scaled = mb.head.logits.f32();  // the logits are consumed: the gradient goes in their place
      for (int64_t i = 0; i < n_logits; ++i) scaled[i] = g * hg.dlogits[i];
      lm_head_->backward_logits(dhead_in, scaled, mb.head, N, T);
    }
    if (hg.dhidden) add_hidden_gradient(dhead_in, hg.dhidden, mb, g);
    float* dxf = A.alloc_f32(Nl * D);
    tp_.enter_backward(dxf, dhead_in, N, D, false, T);
    std::memset(dresid, 0, sizeof(float) * static_cast<size_t>(Nl * D));
    final_norm_->backward(dresid, dxf, mb.resid[layers_.size()].f32(), mb.final_norm, Nl);
  }

  float* dxn = A.alloc_f32(Nl * D);  // gradient at each layer's normalised input
  for (size_t j = static_cast<size_t>(range.end); j-- > static_cast<size_t>(range.begin);) {
    Layer& L = layers_[j];
    T.reset();
    // resid[j+1] = resid[j] + f(norm(resid[j])):  d resid[j] = d resid[j+1] + norm'(f'(d resid[j+1])).
    {
      ProfileScope scope(L.kind->profile_slot >= 0 ? &profile_ : nullptr, L.kind->profile_slot, true);
      L.mixer->backward(dxn, dresid, mb.norms[j].y.f32(), *mb.mixer[j], MixerBatch{mb.B, mb.S, mb.positions.data()},
                        loss_scale, T);
    }
    ProfileScope scope(&profile_, kProfileNorm, true);
    L.norm->backward(dresid, dxn, mb.resid[j].f32(), mb.norms[j], Nl);
  }
  if (!range.first) return dresid;  // the gradient of this chunk's input, for the previous stage
  if (!embedding_->trainable) return nullptr;
  T.reset();
  ProfileScope scope(&profile_, kProfileEmbedding, true);
  const int64_t Vl = embedding_->local_shape[0], v0 = embedding_->local_offset[0];
  const float* dembed = tp_.leave_backward(dresid, N, D, T);
  cpu::embedding_backward(embedding_->grad, dembed, mb.tokens, N, D, Vl, v0, V);
  return nullptr;
}

const float* DecoderLM::logits(const MicroBatch& mb) const {
  FF_CHECK(lm_head_ != nullptr, "logits(): this model has a value head (model.head = value); read head_rows()");
  FF_CHECK(mb.head.logits.shape[0] == mb.head.x_op.shape[0],
           "logits(): the last forward kept one chunk of logits (model.head_chunk_rows); forward without targets "
           "gives all of them");
  return mb.head.logits.f32();
}

std::vector<MoeLayer*> DecoderLM::moe_layers() {
  std::vector<MoeLayer*> out;
  for (auto& L : layers_)
    if (L.mixer && L.mixer->moe()) out.push_back(L.mixer->moe());
  return out;
}

std::vector<int32_t> DecoderLM::routed_experts(const MicroBatch& mb) const {
  std::vector<int32_t> out;
  for (size_t j = 0; j < layers_.size(); ++j)
    if (layers_[j].mixer) {
      const auto idx = layers_[j].mixer->routed_experts(*mb.mixer[j]);
      out.insert(out.end(), idx.begin(), idx.end());
    }
  return out;
}

std::vector<DecoderLM::NamedBuffer> DecoderLM::state_buffers() {
  std::vector<NamedBuffer> out;
  if (!cfg_.moe_expert_bias) return out;
  const std::string pattern = cfg_.pattern();
  for (size_t j = 0; j < layers_.size(); ++j)
    if (layers_[j].mixer && layers_[j].mixer->moe())
      out.push_back({layer_prefix(pattern, j) + ".mlp.gate.expert_bias", &layers_[j].mixer->moe()->router().expert_bias(),
                     first_replica_});
  return out;
}

void DecoderLM::declare_importance(ImportanceStats& stats) const {
  const std::string pattern = cfg_.pattern();
  const auto kinds = cfg_.layers();
  for (size_t j = 0; j < kinds.size(); ++j) {
    const std::string p = layer_prefix(pattern, j);
    stats.declare(p + "." + layer_kind(kinds[j]).norm, cfg_.d_model);
    layer_kind(kinds[j]).declare_importance(cfg_, p, stats);
  }
}

void DecoderLM::add_importance(const MicroBatch& mb, ImportanceStats& stats) const {
  const int64_t D = cfg_.d_model, N = mb.B * mb.S, Nl = tp_.local_rows(N);
  const int P = cp_ ? cp_->size() : 1;
  // The stream: this TP rank's rows under SP (partial sums completed over TP), else every row
  // (TP ranks are replicas: rank 0 counts); each CP rank holds L = S / CP rows of each sequence.
  ImportanceSite site;
  site.B = mb.B;
  site.S = mb.S * P;
  site.L = mb.S;
  site.cp = cp_;
  site.tp = tp_;
  ImportanceRows rows{mb.B, mb.S * P, mb.S, tp_.sequence_parallel ? tp_.rank() * Nl : 0, Nl, {cp_}};
  if (tp_.sequence_parallel) rows.row_groups.push_back(tp_.group);
  const bool counted = tp_.sequence_parallel || tp_.rank() == 0;
  const std::string pattern = cfg_.pattern();
  for (size_t j = 0; j < layers_.size(); ++j) {
    if (!layers_[j].mixer) continue;
    site.prefix = layer_prefix(pattern, j);
    const Tensor& y = mb.norms[j].y;
    const std::string norm = site.prefix + "." + layers_[j].kind->norm;
    stats.add(norm, 0, D, y, 0, D, rows, counted);
    // Depth (§3.5): 1 - cos(h_in, h_out) of every row, its mean over the rows of the batch.
    double sum = 0;
    const float* in = mb.resid[j].f32();
    const float* out = mb.resid[j + 1].f32();
    for (int64_t r = 0; r < Nl; ++r) {
      double dot = 0, a = 0, b = 0;
      for (int64_t k = 0; k < D; ++k) {
        dot += static_cast<double>(in[r * D + k]) * out[r * D + k];
        a += static_cast<double>(in[r * D + k]) * in[r * D + k];
        b += static_cast<double>(out[r * D + k]) * out[r * D + k];
      }
      sum += 1.0 - dot / std::max(std::sqrt(a * b), 1e-30);
    }
    if (counted) stats.add_mean(norm, sum, Nl);
    layers_[j].mixer->add_importance(*mb.mixer[j], site, stats);
  }
}

void DecoderLM::synchronize_tied_embeddings() {
  if (!tied_across_stages_) return;
  // The first stage's embedding and the last stage's copy each hold part of the gradient. Summed
  // over the pipeline group; middle stages take part with zeros (a group of the first and last
  // stage alone would spare them the traffic).
  const Param* e = embedding_ ? embedding_ : head_;
  const int64_t n = (cfg_.vocab_size / tp_.size()) * cfg_.d_model;
  if (e) {
    pp_->all_reduce_sum(e->grad, n);
  } else {
    std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
    pp_->all_reduce_sum(zeros.data(), n);
  }
}

void DecoderLM::end_of_step() {
  for (MoeLayer* moe : moe_layers()) {
    moe->router().update_expert_bias();
    moe->router().end_of_step();
  }
}

}  // namespace ff
