#include "recipes/ppo/rollout_share.h"

#include <algorithm>

namespace ff {

void SideRollouts::append(Rollouts part, const std::vector<int64_t>& indices) {
  which.insert(which.end(), indices.begin(), indices.end());
  ro.B = part.B;
  ro.S = part.S;
  for (size_t m = 0; m < part.tokens.size(); ++m) {
    ro.tokens.push_back(std::move(part.tokens[m]));
    ro.targets.push_back(std::move(part.targets[m]));
    ro.spans.push_back(std::move(part.spans[m]));
    ro.ended.push_back(std::move(part.ended[m]));
  }
}

LossRows loss_rows(const SideRollouts& side, const RolloutScores& sc, const TrainConfig& tc) {
  const Rollouts& ro = side.ro;
  const int64_t B = ro.B, S = ro.S, M = ro.micro_batches();
  LossRows r;
  for (auto* v : {&r.logp, &r.values, &r.adv, &r.ret, &r.mask, &r.actor_mask})
    v->assign(static_cast<size_t>(M), std::vector<float>(static_cast<size_t>(B * S), 0.0f));
  std::vector<float> rewards(static_cast<size_t>(S));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < B; ++b) {
      const size_t mi = static_cast<size_t>(m), o = static_cast<size_t>(b * S);
      const int64_t i = side.which[static_cast<size_t>(m * B + b)];
      const size_t g = static_cast<size_t>(i * S);
      const ResponseSpan sp = ro.spans[mi][static_cast<size_t>(b)];
      std::copy(sc.logp.begin() + g, sc.logp.begin() + g + S, r.logp[mi].begin() + o);
      std::copy(sc.values.begin() + g, sc.values.begin() + g + S, r.values[mi].begin() + o);
      kl_penalized_rewards(rewards.data(), sc.logp.data() + g, sc.ref.data() + g, sp, S, sc.score[static_cast<size_t>(i)],
                           tc.ppo_kl_beta, tc.ppo_absolute_kl);
      generalized_advantages(r.adv[mi].data() + o, r.ret[mi].data() + o, rewards.data(), sc.values.data() + g, sp, S,
                             tc.ppo_gamma, tc.ppo_lambda);
      const bool learn = ro.ended[mi][static_cast<size_t>(b)] != 0 || !tc.ppo_only_ended;
      for (int64_t t = sp.first; t < sp.end; ++t) {
        r.mask[mi][o + static_cast<size_t>(t)] = 1.0f;
        r.actor_mask[mi][o + static_cast<size_t>(t)] = learn ? 1.0f : 0.0f;
      }
    }
  return r;
}

StepBatch step_batch(const SideRollouts& side, int64_t j, int64_t GA, const std::vector<std::vector<float>>& old,
                     const std::vector<std::vector<float>>& target, const std::vector<std::vector<float>>& mask) {
  StepBatch b;
  for (int64_t m = j * GA; m < (j + 1) * GA; ++m) {
    const size_t mi = static_cast<size_t>(m);
    b.tokens.push_back(side.ro.tokens[mi]);
    b.targets.push_back(side.ro.targets[mi]);
    b.rows.push_back({old[mi], target[mi], mask[mi]});
    for (float v : mask[mi]) b.masked += v;
  }
  return b;
}

}  // namespace ff
