#include "recipes/ppo/ppo_objective.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "layers/vocab_parallel.h"
#include "recipes/ppo/rollouts.h"

namespace ff {

void PpoLossStats::add(const PpoLossStats& o) {
  rows += o.rows;
  clipped += o.clipped;
  ratio += o.ratio;
  entropy += o.entropy;
}

namespace {

const PpoRows& micro_batch_rows(const std::vector<PpoRows>& rows, const HeadRows& in) {
  FF_CHECK(in.micro_batch >= 0 && in.micro_batch < static_cast<int64_t>(rows.size()), "PPO: micro-batch %lld has no "
           "rollout rows (%zu given)", (long long)in.micro_batch, rows.size());
  const PpoRows& r = rows[static_cast<size_t>(in.micro_batch)];
  const size_t want = static_cast<size_t>(in.B * in.S * (in.cp ? in.cp->size() : 1));
  FF_CHECK(r.old.size() == want && r.target.size() == want && r.mask.size() == want, "PPO: a rollout micro-batch of "
           "%zu rows, the model's of %zu", r.mask.size(), want);
  return r;
}

// sums: loss, rows, clipped, ratio, entropy over this rank's rows; completed over CP.
ObjectiveValue finish(double sums[5], const HeadRows& in, double total, PpoLossStats& stats) {
  if (in.cp) in.cp->all_reduce_sum(sums, 5);
  stats.add({sums[1], sums[2], sums[3], sums[4]});
  return {total > 0 ? sums[0] / total : 0.0, static_cast<int64_t>(sums[1])};
}

}  // namespace

PpoActorLoss::PpoActorLoss(const std::vector<PpoRows>& rows, double total_rows, double clip_eps, double entropy_coeff)
    : rows_(rows), total_(total_rows), eps_(clip_eps), entropy_(entropy_coeff) {
  FF_CHECK(clip_eps > 0 && clip_eps < 1, "PPO's ratio clip %g: must be in (0, 1)", clip_eps);
  FF_CHECK(entropy_coeff >= 0, "PPO's entropy coefficient %g: must be >= 0", entropy_coeff);
}

ObjectiveValue PpoActorLoss::evaluate(const StudentLogits& in, float* dlogits, float*) const {
  const HeadRows& hr = in.rows;
  const PpoRows& r = micro_batch_rows(rows_, hr);
  const int64_t N = hr.B * hr.S, Vl = in.Vl;
  const double inv = total_ > 0 ? 1.0 / total_ : 0.0;
  // Each row's entropy from the vocabulary shards: H = lse - sum_v p_v z_v, the sum completed over TP.
  std::vector<double> pz(static_cast<size_t>(N), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const float* z = in.logits + n * Vl;
    double acc = 0;
    for (int64_t v = 0; v < Vl; ++v) acc += std::exp(double(z[v]) - in.lse[n]) * z[v];
    pz[static_cast<size_t>(n)] = acc;
  }
  if (in.tp) in.tp->all_reduce_sum(pz.data(), N);
  double sums[5] = {0, 0, 0, 0, 0};  // loss, rows, clipped, ratio, entropy
  std::vector<float> dce(static_cast<size_t>(N), 0.0f);  // d L / d (-logp) per row
  std::vector<double> dentropy(static_cast<size_t>(N), 0.0);  // d L / d H per row
  for (int64_t n = 0; n < N; ++n) {
    const size_t g = static_cast<size_t>(rollout_row(hr, n));
    if (r.mask[g] <= 0 || hr.targets[n] < 0) continue;
    const double A = r.target[g], rho = std::exp(double(hr.value[n]) - r.old[g]);
    const double unclipped = -A * rho, clipped = -A * std::clamp(rho, 1.0 - eps_, 1.0 + eps_);
    const double H = in.lse[n] - pz[static_cast<size_t>(n)];
    const bool clip_wins = clipped > unclipped;
    sums[0] += std::max(unclipped, clipped) - entropy_ * H;
    sums[1] += 1;
    sums[2] += clip_wins;
    sums[3] += rho;
    sums[4] += H;
    if (!clip_wins) dce[static_cast<size_t>(n)] = static_cast<float>(A * rho * inv);  // d(-A rho)/d(-logp) = A rho
    dentropy[static_cast<size_t>(n)] = -entropy_ * inv;
  }
  // The surrogate: d/dz of -logp is softmax - onehot (this shard's slice).
  vocab_parallel_cross_entropy_backward(dlogits, in.logits, in.lse, hr.targets, dce.data(), N, Vl, in.v0);
  // The entropy bonus: dH/dz_v = -p_v (z_v - lse + H).
  for (int64_t n = 0; n < N; ++n) {
    const double w = dentropy[static_cast<size_t>(n)];
    if (w == 0) continue;
    const double H = in.lse[n] - pz[static_cast<size_t>(n)];
    const float* z = in.logits + n * Vl;
    for (int64_t v = 0; v < Vl; ++v) {
      const double p = std::exp(double(z[v]) - in.lse[n]);
      dlogits[n * Vl + v] += static_cast<float>(w * -p * (double(z[v]) - in.lse[n] + H));
    }
  }
  return finish(sums, hr, total_, stats_);
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
  double sums[5] = {0, 0, 0, 0, 0};  // loss, rows, clipped, V - V_old, (entropy: none)
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
