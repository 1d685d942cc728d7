#include "layers/moe/moe_layer.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/gemm.h"

namespace ff {

namespace {
// Experts held by this rank: E / EP of them, starting at ep_rank * E / EP.
int64_t local_experts(const ModelConfig& cfg, const ParallelGrid& grid) {
  FF_CHECK(cfg.num_experts % grid.ep().size() == 0, "model.num_experts = %lld is not divisible by parallel.ep = %d",
           (long long)cfg.num_experts, grid.ep().size());
  return cfg.num_experts / grid.ep().size();
}
}  // namespace

MoeLayer::MoeLayer(ParamStore& store, Compute& compute, const std::string& prefix, const ModelConfig& cfg, const ParallelGrid& grid,
                   float init_std, float out_init_std, const LoraOptions& lora)
    : cfg_(cfg),
      compute_(compute),
      tp_{&grid.tp(), grid.config().sequence_parallel},
      router_(store, prefix + ".gate", cfg, grid),
      experts_(store, compute, prefix, cfg, grid.ep().rank() * local_experts(cfg, grid), local_experts(cfg, grid), init_std,
               out_init_std, grid.etp().rank(), grid.etp().size(), lora) {
  if (cfg.moe_shared_expert_hidden > 0) {
    // The shared expert is a dense MLP on the attention TP group (with sequence parallelism).
    shared_.emplace(store, compute, prefix + ".shared_expert", cfg.d_model, cfg.moe_shared_expert_hidden, cfg.activation,
                    init_std, out_init_std, tp_, lora);
    if (cfg.moe_shared_expert_gate) {
      shared_gate_ = store.add(prefix + ".shared_expert_gate.weight", Shape{1, cfg.d_model}, ParamInit::normal, init_std);
      shared_gate_->tp_replicated = true;
    }
  }
  dispatcher_ = make_dispatcher(grid, cfg.num_experts, cfg.moe_top_k, cfg.d_model);
}

void MoeLayer::forward(Saved& s, float* out, const float* x, int64_t N_full, int64_t sequences, Arena& arena) {
  const int64_t D = cfg_.d_model, K = cfg_.moe_top_k, E = cfg_.num_experts, N = tp_.local_rows(N_full);
  {
    ProfileScope scope(profile_, kProfileRouter, false);
    const int64_t first_row = tp_.sequence_parallel ? tp_.rank() * N : 0;
    router_.forward(s.router, x, N, RouterBatch{sequences, N_full, first_row, compute_.training()}, arena);
  }

  Routing routing;
  routing.topk_idx = s.router.idx();
  routing.topk_probs = s.router.topk_probs.f32();
  s.keep.clear();
  if (cfg_.moe_capacity_factor > 0) {
    const int64_t C = cpu::expert_capacity(N, K, E, cfg_.moe_capacity_factor);
    s.keep.resize(static_cast<size_t>(N * K));
    cpu::capacity_keep_mask(s.keep.data(), routing.topk_idx, routing.topk_probs, N, K, E, C, cfg_.moe_drop_policy);
    routing.keep = s.keep.data();
    if (cfg_.moe_pad_to_capacity) routing.pad_to_capacity = C;
  }
  {
    ProfileScope scope(profile_, kProfileDispatch, false);
    dispatcher_->dispatch(s.dispatch, x, routing, N, arena);
  }

  const int64_t R = s.dispatch.rows.shape[0];
  s.expert_out = arena.alloc(Shape{R, D});
  {
    ProfileScope scope(profile_, kProfileExperts, false);
    experts_.forward(s.experts, s.expert_out.f32(), s.dispatch.rows.f32(), s.dispatch.row_probs.f32(),
                     s.dispatch.tokens_per_local_expert, arena);
  }
  {
    ProfileScope scope(profile_, kProfileDispatch, false);
    dispatcher_->combine(out, s.expert_out.f32(), s.dispatch, N);
  }

  if (shared_) {
    s.shared_out = arena.alloc(Shape{N, D});
    {
      ProfileScope scope(profile_, kProfileSharedExpert, false);
      shared_->forward(s.shared, s.shared_out.f32(), x, N_full, arena);
    }
    const float* so = s.shared_out.f32();
    if (shared_gate_) {
      s.shared_gate = arena.alloc(Shape{N});
      float* g = s.shared_gate.f32();
      cpu::linear_forward(g, x, shared_gate_->value, N, D, 1);
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        g[n] = 1.0f / (1.0f + std::exp(-g[n]));
        for (int64_t j = 0; j < D; ++j) out[n * D + j] += g[n] * so[n * D + j];
      }
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < N * D; ++i) out[i] += so[i];
    }
  }

  // Statistics of this rank's tokens: kept (token, expert) slots per expert, before dispatch.
  s.stats.aux_loss = s.router.aux_loss;
  s.stats.z_loss = s.router.z_loss;
  s.stats.routed_slots = N * K;
  s.stats.tokens_per_expert.assign(static_cast<size_t>(E), 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < N * K; ++i)
    if (s.keep.empty() || s.keep[static_cast<size_t>(i)]) {
      ++s.stats.tokens_per_expert[static_cast<size_t>(routing.topk_idx[i])];
      ++kept;
    }
  s.stats.dropped_slots = N * K - kept;
  s.stats.sent_rows = dispatcher_->sent_rows(s.dispatch);
}

void MoeLayer::backward(float* dx, const float* dout, const float* x, const Saved& s, int64_t N_full,
                        float loss_scale, Arena& scratch) {
  const int64_t D = cfg_.d_model, K = cfg_.moe_top_k, N = tp_.local_rows(N_full);
  const int64_t R = s.dispatch.rows.shape[0];
  // The expert-bias load counts training micro-batches only (those that reach backward), not
  // validation or generation forwards.
  router_.accumulate_expert_load(s.stats.tokens_per_expert.data());
  // Shared expert first: it writes dx, the routed path then accumulates.
  bool dx_written = false;
  if (shared_) {
    const float* dshared = dout;
    if (shared_gate_) {
      // out += g * so, g = sigmoid(x . wg):  dso = dout * g;  dlogit = <dout, so> g (1 - g).
      float* dso = scratch.alloc_f32(N * D);
      float* dlogit = scratch.alloc_f32(N);
      const float* g = s.shared_gate.f32();
      const float* so = s.shared_out.f32();
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        double dot = 0;
        for (int64_t j = 0; j < D; ++j) {
          dso[n * D + j] = dout[n * D + j] * g[n];
          dot += static_cast<double>(dout[n * D + j]) * so[n * D + j];
        }
        dlogit[n] = static_cast<float>(dot) * g[n] * (1.0f - g[n]);
      }
      dshared = dso;
      cpu::linear_backward(dx, shared_gate_->grad, dlogit, x, shared_gate_->value, N, D, 1, false);
      dx_written = true;
    }
    {
      ProfileScope scope(profile_, kProfileSharedExpert, true);
      shared_->backward(dx, dshared, s.shared, N_full, dx_written, scratch);
    }
    dx_written = true;
  }
  if (!dx_written) std::memset(dx, 0, sizeof(float) * static_cast<size_t>(N * D));

  float* drows_out = scratch.alloc_f32(R * D);
  {
    ProfileScope scope(profile_, kProfileDispatch, true);
    dispatcher_->combine_backward(drows_out, dout, s.dispatch, scratch);
  }
  float* drows_in = scratch.alloc_f32(R * D);
  float* drow_probs = scratch.alloc_f32(R);
  {
    ProfileScope scope(profile_, kProfileExperts, true);
    experts_.backward(drows_in, drow_probs, drows_out, s.dispatch.row_probs.f32(), s.experts,
                      s.dispatch.tokens_per_local_expert, scratch);
  }
  float* dtopk = scratch.alloc_f32(N * K);
  std::memset(dtopk, 0, sizeof(float) * static_cast<size_t>(N * K));
  {
    ProfileScope scope(profile_, kProfileDispatch, true);
    dispatcher_->dispatch_backward(dx, dtopk, drows_in, drow_probs, s.dispatch, N);
  }
  {
    ProfileScope scope(profile_, kProfileRouter, true);
    router_.backward(dx, dtopk, x, s.router, N, loss_scale, scratch);
  }
}

}  // namespace ff
