#include "optim/distributed_optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/adamw.h"

namespace ff {

DistributedAdamW::DistributedAdamW(ParamStore& params, const OptimizerConfig& cfg, const ParallelGrid& grid)
    : params_(params), cfg_(cfg), grid_(grid) {
  for (int k = 0; k < 2; ++k) {
    Region& r = regions_[k];
    r.expert = k == 1;
    r.group = r.expert ? &grid.edp() : &grid.dp_cp();
    r.begin = params.region_begin(r.expert);
    r.end = params.region_end(r.expert);
    const int64_t P = r.group->size();
    FF_CHECK((r.end - r.begin) % P == 0, "%s parameter region of %lld elements is not padded to the group size %lld",
             r.expert ? "the expert" : "the dense", (long long)(r.end - r.begin), (long long)P);
    r.shard_len = (r.end - r.begin) / P;
    r.shard_begin = r.begin + r.group->rank() * r.shard_len;
    r.grad.assign(static_cast<size_t>(r.shard_len), 0.0f);
    r.m.assign(static_cast<size_t>(r.shard_len), 0.0f);
    r.v.assign(static_cast<size_t>(r.shard_len), 0.0f);
  }
}

void DistributedAdamW::gather_moments(std::vector<float>& m, std::vector<float>& v) const {
  m.assign(static_cast<size_t>(params_.grad_numel()), 0.0f);
  v.assign(m.size(), 0.0f);
  for (const Region& r : regions_) {
    r.group->all_gather(m.data() + r.begin, r.m.data(), r.shard_len);
    r.group->all_gather(v.data() + r.begin, r.v.data(), r.shard_len);
  }
}

void DistributedAdamW::scatter_moments(const std::vector<float>& m, const std::vector<float>& v) {
  FF_CHECK(m.size() == static_cast<size_t>(params_.grad_numel()) && v.size() == m.size(),
           "scatter_moments: %zu / %zu moments for %lld trainable parameters", m.size(), v.size(),
           (long long)params_.grad_numel());
  for (Region& r : regions_) {
    std::copy(m.begin() + r.shard_begin, m.begin() + r.shard_begin + r.shard_len, r.m.begin());
    std::copy(v.begin() + r.shard_begin, v.begin() + r.shard_begin + r.shard_len, r.v.begin());
  }
}

int64_t DistributedAdamW::state_bytes() const {
  int64_t n = 0;
  for (const Region& r : regions_) n += static_cast<int64_t>(r.m.size() + r.v.size()) * 4;
  return n;
}

double DistributedAdamW::step(double lr) {
  float* grads = params_.grads();
  float* values = params_.values();
  // 1. Partial gradients of TP-replicated parameters under sequence parallelism, and of the
  // factors held whole beside sliced weights (LoRA): over TP, or over ETP for experts.
  if (grid_.tp().size() > 1)
    for (Param& p : params_.params())
      if (p.trainable && ((p.tp_replicated && grid_.config().sequence_parallel) || p.tp_partial_grad))
        grid_.tp().all_reduce_sum(p.grad, p.numel());
  if (grid_.etp().size() > 1)
    for (Param& p : params_.params())
      if (p.trainable && p.etp_partial_grad) grid_.etp().all_reduce_sum(p.grad, p.numel());

  // 2. Reduce-scatter each region's gradients into its owned shard.
  const float scale = 1.0f / static_cast<float>(grid_.dp_size() * grid_.cp().size());
  for (Region& r : regions_) {
    const int64_t n = r.end - r.begin;
    if (scale != 1.0f) {
      float* g = grads + r.begin;
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < n; ++i) g[i] *= scale;
    }
    r.group->reduce_scatter(r.grad.data(), grads + r.begin, r.shard_len);
  }

  // 3. Global norm: every element is in exactly one owned shard; TP replicas count once.
  double sq = 0;
  for (const Region& r : regions_)
    for (const Param& p : params_.params()) {
      if (p.expert != r.expert || p.replica || !p.trainable) continue;
      const int64_t lo = std::max(p.offset, r.shard_begin), hi = std::min(p.offset + p.numel(), r.shard_begin + r.shard_len);
      for (int64_t i = lo; i < hi; ++i) {
        const double g = r.grad[static_cast<size_t>(i - r.shard_begin)];
        sq += g * g;
      }
    }
  grid_.all().all_reduce_sum(&sq, 1);
  const double norm = std::sqrt(sq);
  FF_CHECK(std::isfinite(norm), "gradient norm is %g at step %lld: the loss diverged (lower optim.lr or raise warmup)",
           norm, (long long)t_ + 1);
  const float clip = (cfg_.grad_clip > 0 && norm > cfg_.grad_clip) ? static_cast<float>(cfg_.grad_clip / norm) : 1.0f;

  // 4. AdamW on the owned shard, parameter by parameter (weight decay differs), 5. all-gather.
  ++t_;
  for (Region& r : regions_) {
    for (const Param& p : params_.params()) {
      if (p.expert != r.expert || !p.trainable) continue;
      const int64_t lo = std::max(p.offset, r.shard_begin), hi = std::min(p.offset + p.numel(), r.shard_begin + r.shard_len);
      if (lo >= hi) continue;
      const size_t s = static_cast<size_t>(lo - r.shard_begin);
      cpu::AdamWStep st{static_cast<float>(lr), static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                        static_cast<float>(cfg_.adam_eps), p.weight_decay ? static_cast<float>(cfg_.weight_decay) : 0.0f,
                        t_, clip};
      cpu::adamw_update(values + lo, r.m.data() + s, r.v.data() + s, r.grad.data() + s, hi - lo, st);
    }
    // The padding past the last parameter stays zero: no parameter covers it.
    r.group->all_gather(values + r.begin, values + r.shard_begin, r.shard_len);
  }
  return norm;
}

}  // namespace ff
