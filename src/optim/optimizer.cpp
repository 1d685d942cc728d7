#include "optim/optimizer.h"

#include <cmath>

#include "kernels/cpu/adamw.h"

namespace ff {

namespace {
constexpr EnumName<LrDecay> kDecays[] = {
    {LrDecay::cosine, "cosine"}, {LrDecay::linear, "linear"}, {LrDecay::constant, "constant"}};
}
std::span<const EnumName<LrDecay>> enum_names(LrDecay) { return kDecays; }

std::vector<std::string> OptimizerConfig::validate() const {
  std::vector<std::string> e;
  if (!(lr > 0)) e.push_back(strprintf("optim.lr = %g: must be > 0", lr));
  if (min_lr < 0 || min_lr > lr) e.push_back(strprintf("optim.min_lr = %g: must be in [0, lr = %g]", min_lr, lr));
  if (warmup_steps < 0) e.push_back(strprintf("optim.warmup_steps = %lld: must be >= 0", (long long)warmup_steps));
  if (weight_decay < 0) e.push_back(strprintf("optim.weight_decay = %g: must be >= 0", weight_decay));
  if (!(beta1 >= 0 && beta1 < 1)) e.push_back(strprintf("optim.beta1 = %g: must be in [0, 1)", beta1));
  if (!(beta2 >= 0 && beta2 < 1)) e.push_back(strprintf("optim.beta2 = %g: must be in [0, 1)", beta2));
  if (!(adam_eps > 0)) e.push_back(strprintf("optim.adam_eps = %g: must be > 0", adam_eps));
  if (grad_clip < 0) e.push_back(strprintf("optim.grad_clip = %g: must be >= 0 (0 = off)", grad_clip));
  return e;
}

double learning_rate(const OptimizerConfig& c, int64_t step, int64_t total) {
  if (c.warmup_steps > 0 && step < c.warmup_steps)
    return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (c.lr_decay == LrDecay::constant) return c.lr;
  const int64_t decay_steps = std::max<int64_t>(1, total - c.warmup_steps);
  double frac = std::min(1.0, static_cast<double>(step - c.warmup_steps) / static_cast<double>(decay_steps));
  double coeff = c.lr_decay == LrDecay::cosine ? 0.5 * (1.0 + std::cos(M_PI * frac)) : 1.0 - frac;
  return c.min_lr + coeff * (c.lr - c.min_lr);
}

AdamW::AdamW(ParamStore& params, const OptimizerConfig& cfg, bool allocate_moments)
    : params_(params), cfg_(cfg), m_(allocate_moments ? static_cast<size_t>(params.grad_numel()) : 0, 0.0f),
      v_(allocate_moments ? static_cast<size_t>(params.grad_numel()) : 0, 0.0f) {}

double AdamW::grad_norm(const Communicator& dense_group, const Communicator& expert_group) const {
  double sq[2] = {0, 0};  // dense, expert
  for (const Param& p : params_.params()) {
    if (p.replica || !p.trainable) continue;  // counted by the rank that owns it; frozen: no gradient
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < p.numel(); ++i) s += static_cast<double>(p.grad[i]) * p.grad[i];
    sq[p.expert ? 1 : 0] += s;
  }
  dense_group.all_reduce_sum(&sq[0], 1);
  expert_group.all_reduce_sum(&sq[1], 1);
  return std::sqrt(sq[0] + sq[1]);
}

double AdamW::step(double lr, const Communicator& dense_group, const Communicator& expert_group) {
  FF_CHECK(m_.size() == static_cast<size_t>(params_.grad_numel()), "AdamW::step on an optimizer without moments");
  const double norm = grad_norm(dense_group, expert_group);
  FF_CHECK(std::isfinite(norm), "gradient norm is %g at step %lld: the loss diverged (lower optim.lr or raise warmup)",
           norm, (long long)t_ + 1);
  float clip_scale = 1.0f;
  if (cfg_.grad_clip > 0 && norm > cfg_.grad_clip) clip_scale = static_cast<float>(cfg_.grad_clip / norm);
  ++t_;
  for (Param& p : params_.params()) {
    if (!p.trainable) continue;
    cpu::AdamWStep s{static_cast<float>(lr), static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                     static_cast<float>(cfg_.adam_eps), p.weight_decay ? static_cast<float>(cfg_.weight_decay) : 0.0f,
                     t_, clip_scale};
    cpu::adamw_update(p.value, m_.data() + p.offset, v_.data() + p.offset, p.grad, p.numel(), s);
  }
  return norm;
}

}  // namespace ff
