#include "recipes/ppo/ppo_objective.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace ff {

void PpoLossStats::add(const PpoLossStats& o) {
  rows += o.rows;
  clipped += o.clipped;
  ratio += o.ratio;
}

namespace {

// Row n of this rank's rows, in the micro-batch's [B * S] layout.
int64_t rollout_row(const HeadRows& in, int64_t n) {
  const int64_t S_full = in.S * (in.cp ? in.cp->size() : 1);
  return n / in.S * S_full + in.positions[n];
}

const PpoRows& micro_batch_rows(const std::vector<PpoRows>& rows, const HeadRows& in) {
  FF_CHECK(in.micro_batch >= 0 && in.micro_batch < static_cast<int64_t>(rows.size()), "PPO: micro-batch %lld has no "
           "rollout rows (%zu given)", (long long)in.micro_batch, rows.size());
  const PpoRows& r = rows[static_cast<size_t>(in.micro_batch)];
  const size_t want = static_cast<size_t>(in.B * in.S * (in.cp ? in.cp->size() : 1));
  FF_CHECK(r.old.size() == want && r.target.size() == want && r.mask.size() == want, "PPO: a rollout micro-batch of "
           "%zu rows, the model's of %zu", r.mask.size(), want);
  return r;
}

// The loss of one row from its unclipped and clipped terms, and whether the clipped one won.
ObjectiveValue finish(double sums[4], const HeadRows& in, double total, PpoLossStats& stats) {
  if (in.cp) in.cp->all_reduce_sum(sums, 4);
  stats.add({sums[1], sums[2], sums[3]});
  return {total > 0 ? sums[0] / total : 0.0, static_cast<int64_t>(sums[1])};
}

}  // namespace

PpoActorLoss::PpoActorLoss(const std::vector<PpoRows>& rows, double total_rows, double clip_eps)
    : rows_(rows), total_(total_rows), eps_(clip_eps) {
  FF_CHECK(clip_eps > 0 && clip_eps < 1, "PPO's ratio clip %g: must be in (0, 1)", clip_eps);
}

ObjectiveValue PpoActorLoss::evaluate(const HeadRows& in, float* dlogp) const {
  const PpoRows& r = micro_batch_rows(rows_, in);
  const double inv = total_ > 0 ? 1.0 / total_ : 0.0;
  double sums[4] = {0, 0, 0, 0};  // loss, rows, clipped, ratio
  for (int64_t n = 0; n < in.B * in.S; ++n) {
    dlogp[n] = 0.0f;
    const size_t g = static_cast<size_t>(rollout_row(in, n));
    if (r.mask[g] <= 0 || in.targets[n] < 0) continue;
    const double A = r.target[g], rho = std::exp(double(in.value[n]) - r.old[g]);
    const double unclipped = -A * rho, clipped = -A * std::clamp(rho, 1.0 - eps_, 1.0 + eps_);
    const bool clip_wins = clipped > unclipped;
    sums[0] += std::max(unclipped, clipped);
    sums[1] += 1;
    sums[2] += clip_wins;
    sums[3] += rho;
    if (!clip_wins) dlogp[n] = static_cast<float>(-A * rho * inv);  // d(-A rho)/d logp = -A rho
  }
  return finish(sums, in, total_, stats_);
}

PpoCriticLoss::PpoCriticLoss(const std::vector<PpoRows>& rows, double total_rows, double value_clip)
    : rows_(rows), total_(total_rows), clip_(value_clip) {
  FF_CHECK(value_clip > 0, "PPO's value clip %g: must be > 0", value_clip);
}

ObjectiveValue PpoCriticLoss::evaluate(const HeadRows& in, float* dvalue) const {
  FF_CHECK(in.width == 1, "the PPO critic reads one value per row (model.value_outputs = 1), not %lld",
           (long long)in.width);
  const PpoRows& r = micro_batch_rows(rows_, in);
  const double inv = total_ > 0 ? 1.0 / total_ : 0.0;
  double sums[4] = {0, 0, 0, 0};  // loss, rows, clipped, V - V_old
  for (int64_t n = 0; n < in.B * in.S; ++n) {
    dvalue[n] = 0.0f;
    const size_t g = static_cast<size_t>(rollout_row(in, n));
    if (r.mask[g] <= 0 || in.targets[n] < 0) continue;
    const double V = in.value[n], old = r.old[g], G = r.target[g];
    const double v_clip = old + std::clamp(V - old, -clip_, clip_);
    const double unclipped = (V - G) * (V - G), clipped = (v_clip - G) * (v_clip - G);
    const bool clip_wins = clipped > unclipped;
    sums[0] += 0.5 * std::max(unclipped, clipped);
    sums[1] += 1;
    sums[2] += clip_wins;
    sums[3] += V - old;
    if (!clip_wins) dvalue[n] = static_cast<float>((V - G) * inv);
  }
  return finish(sums, in, total_, stats_);
}

}  // namespace ff
