#include "layers/moe/router.h"

#include <algorithm>

#include "kernels/cpu/gemm.h"

namespace ff {

Router::Router(ParamStore& store, const std::string& prefix, const ModelConfig& cfg, const ParallelGrid& grid)
    : cfg_(cfg), opt_(cfg.router_options()), tp_cp_(grid.tp_cp()), tp_dp_cp_(grid.tp_dp_cp()) {
  weight_ = store.add(prefix + ".weight", Shape{cfg.num_experts, cfg.d_model}, ParamInit::normal,
                      static_cast<float>(cfg.init_std));
  weight_->tp_replicated = true;
  if (cfg.moe_expert_bias) {
    expert_bias_.assign(static_cast<size_t>(cfg.num_experts), 0.0f);
    step_load_.assign(static_cast<size_t>(cfg.num_experts), 0);
  }
  if (cfg.moe_load_balancing == LoadBalancing::global_aux_loss)
    global_counts_.assign(static_cast<size_t>(cfg.num_experts), 0);
}

void Router::balancing_counts(Saved& s, int64_t N, const RouterBatch& batch) {
  const int64_t E = opt_.num_experts, K = opt_.top_k;
  const double alpha = cfg_.moe_aux_loss_coeff;
  s.groups = cpu::BalanceGroups{};
  if (cfg_.moe_load_balancing == LoadBalancing::seq_aux_loss) {
    const int64_t B = batch.sequences;
    FF_CHECK(B >= 1 && batch.stream_rows % B == 0, "router: %lld stream rows do not hold %lld whole sequences",
             (long long)batch.stream_rows, (long long)B);
    s.groups = cpu::BalanceGroups{B, batch.stream_rows / B, batch.first_row};
  }
  s.counts.assign(static_cast<size_t>(s.groups.count * E), 0);
  cpu::aux_loss_scores(s.aux_scores.f32(), s.counts.data(), s.logits.f32(), N, s.groups, opt_);
  const int64_t GE = static_cast<int64_t>(s.counts.size());
  switch (cfg_.moe_load_balancing) {
    case LoadBalancing::aux_loss: {  // T = the micro-batch's tokens over TP x CP
      tp_cp_.all_reduce_sum(s.counts.data(), GE);
      s.aux_scale = cpu::switch_loss_scale(alpha, E, K, N * tp_cp_.size());
      break;
    }
    case LoadBalancing::seq_aux_loss: {  // T = S, the whole sequence's tokens; mean over the B sequences
      tp_cp_.all_reduce_sum(s.counts.data(), GE);
      const int64_t S = N * tp_cp_.size() / batch.sequences;
      s.aux_scale = cpu::switch_loss_scale(alpha, E, K, S) / static_cast<double>(batch.sequences);
      break;
    }
    case LoadBalancing::global_aux_loss: {  // running sum over the step's micro-batches and replicas
      tp_dp_cp_.all_reduce_sum(s.counts.data(), GE);
      for (int64_t e = 0; e < E; ++e) global_counts_[static_cast<size_t>(e)] += s.counts[static_cast<size_t>(e)];
      ++global_micro_batches_;
      s.counts = global_counts_;
      const int64_t DP = tp_dp_cp_.size() / tp_cp_.size();
      s.aux_scale = cpu::switch_loss_scale(alpha, E, K, N * tp_dp_cp_.size()) * static_cast<double>(DP) /
                    static_cast<double>(global_micro_batches_);
      break;
    }
    case LoadBalancing::none: break;
  }
}

void Router::forward(Saved& s, const float* x, int64_t N, const RouterBatch& batch, Arena& arena) {
  const int64_t E = opt_.num_experts, K = opt_.top_k;
  s.logits = arena.alloc(Shape{N, E});
  s.scores = arena.alloc(Shape{N, E});
  s.topk_idx = arena.alloc(Shape{N, K});
  s.topk_probs = arena.alloc(Shape{N, K});
  cpu::linear_forward(s.logits.f32(), x, weight_->value, N, cfg_.d_model, E);
  // Order inside routing (§6.1): z-loss, top-k, (capacity dropping, in the layer), aux losses.
  s.z_loss = 0;
  if (cfg_.moe_z_loss_coeff > 0) {
    s.z_lse = arena.alloc(Shape{N});
    s.z_loss = cpu::z_loss_forward(s.z_lse.f32(), s.logits.f32(), N, E, static_cast<float>(cfg_.moe_z_loss_coeff)) /
               tp_cp_.size();
  }
  cpu::router_topk_forward(static_cast<int32_t*>(s.topk_idx.ptr), s.topk_probs.f32(), s.scores.f32(), s.logits.f32(),
                           expert_bias_.empty() ? nullptr : expert_bias_.data(), N, opt_);
  s.aux_loss = 0;
  s.aux_scale = 0;
  if (batch.training && cfg_.moe_load_balancing != LoadBalancing::none && cfg_.moe_aux_loss_coeff > 0) {
    s.aux_scores = arena.alloc(Shape{N, E});
    balancing_counts(s, N, batch);
    s.aux_loss = cpu::aux_loss_value(s.aux_scores.f32(), s.counts.data(), N, s.groups, s.aux_scale, opt_);
  }
  // Each rank's values are its share of the micro-batch's losses; report the sums (§6.3, §6.5).
  if (tp_cp_.size() > 1) {
    double both[2] = {s.aux_loss, s.z_loss};
    tp_cp_.all_reduce_sum(both, 2);
    s.aux_loss = both[0];
    s.z_loss = both[1];
  }
}

void Router::backward(float* dx, const float* dtopk_probs, const float* x, const Saved& s, int64_t N,
                      float loss_scale, Arena& scratch) const {
  const int64_t E = opt_.num_experts;
  float* dlogits = scratch.alloc_f32(N * E);
  cpu::router_topk_backward(dlogits, dtopk_probs, s.idx(), s.topk_probs.f32(), s.scores.f32(), s.logits.f32(), N, opt_);
  if (s.aux_scale != 0)
    cpu::aux_loss_backward(dlogits, s.aux_scores.f32(), s.counts.data(), s.logits.f32(), N, s.groups, s.aux_scale,
                           loss_scale, opt_);
  if (cfg_.moe_z_loss_coeff > 0)
    cpu::z_loss_backward(dlogits, s.logits.f32(), s.z_lse.f32(), N, E,
                         static_cast<float>(cfg_.moe_z_loss_coeff / tp_cp_.size()), loss_scale);
  cpu::linear_backward(dx, weight_->grad, dlogits, x, weight_->value, N, cfg_.d_model, E, true);
}

void Router::accumulate_expert_load(const int64_t* tokens_per_expert) {
  if (expert_bias_.empty()) return;
  for (size_t e = 0; e < step_load_.size(); ++e) step_load_[e] += tokens_per_expert[e];
}

void Router::update_expert_bias() {
  if (expert_bias_.empty()) return;
  tp_dp_cp_.all_reduce_sum(step_load_.data(), static_cast<int64_t>(step_load_.size()));
  double mean = 0;
  for (int64_t c : step_load_) mean += static_cast<double>(c);
  mean /= static_cast<double>(step_load_.size());
  const float u = static_cast<float>(cfg_.moe_expert_bias_update_rate);
  for (size_t e = 0; e < step_load_.size(); ++e) {
    double diff = mean - static_cast<double>(step_load_[e]);
    expert_bias_[e] += diff > 0 ? u : (diff < 0 ? -u : 0.0f);
  }
  std::fill(step_load_.begin(), step_load_.end(), 0);
}

void Router::end_of_step() {
  std::fill(global_counts_.begin(), global_counts_.end(), 0);
  global_micro_batches_ = 0;
}

}  // namespace ff
