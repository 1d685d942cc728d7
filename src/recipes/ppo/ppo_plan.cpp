#include "recipes/ppo/ppo_plan.h"

#include <algorithm>

#include "core/check.h"
#include "models/config.h"
#include "train/model_source.h"

namespace ff {

std::string ppo_plan_table(const RunConfig& cfg, int64_t world, const DeviceSpec& device) {
  const auto& tc = cfg.train;
  struct Role {
    const char* name;
    ModelConfig model;
    bool trainable;
    bool critic_group;  // held by the critic's ranks when they are split off
  };
  auto from = [&](const std::string& path, bool value_head) {
    ModelConfig m = open_model_source(path).config.model;
    m.precision = cfg.model.precision;
    if (value_head) {
      m.head = HeadKind::value;
      m.value_outputs = 1;
    }
    return m;
  };
  std::vector<Role> roles = {{"actor", cfg.model, true, false}};
  if (cfg.model.lora_rank == 0 || !tc.reference.empty()) {
    ModelConfig r = tc.reference.empty() ? cfg.model : from(tc.reference, false);
    r.lora_rank = 0;
    roles.push_back({"reference", r, false, false});
  }
  roles.push_back({"critic", from(tc.critic_init.empty() ? tc.reward_model : tc.critic_init, true), true, true});
  roles.push_back({"reward model", from(tc.reward_model, false), false, true});
  const bool split = tc.ppo_critic_ranks > 0;
  const int64_t critic_world = split ? tc.ppo_critic_ranks : world, actor_world = split ? cfg.actor_world(world) : world;
  const ParallelConfig critic_layout = split ? cfg.ppo_critic_layout() : cfg.parallel;
  const double gib = 1024.0 * 1024 * 1024;
  // Each role's most loaded rank; the sum over a group's roles bounds any one of its ranks.
  std::string s = split ? strprintf("PPO roles, split: the actor's group on %lld ranks (parallel.*), the critic's on "
                                    "the last %lld (tp %lld, pp %lld); each role's most loaded rank:\n",
                                    (long long)actor_world, (long long)critic_world, (long long)critic_layout.tp,
                                    (long long)critic_layout.pp)
                        : std::string("PPO roles on this layout (each role's most loaded rank):\n");
  s += strprintf("%-14s %11s %9s %9s %9s %9s %9s\n", "role", "parameters", "weights", "grads", "optim", "activ", "total");
  double totals[2] = {0, 0};  // the actor's group, the critic's (one group when shared)
  for (const Role& r : roles) {
    // A frozen role scores one micro-batch at a time: one activation record, no gradients or moments.
    const ParallelConfig& layout = r.critic_group ? critic_layout : cfg.parallel;
    const int64_t ranks = r.critic_group ? critic_world : actor_world;
    int64_t accum = tc.grad_accum;
    if (r.critic_group && split) {  // the critic's replicas split the actor's optimizer step
      const int64_t actor_dp = actor_world / (cfg.parallel.tp * cfg.parallel.cp * cfg.parallel.pp);
      const int64_t critic_dp = critic_world / (layout.tp * layout.cp * layout.pp);
      accum = std::max<int64_t>(1, tc.grad_accum * actor_dp / std::max<int64_t>(critic_dp, 1));
    }
    const Plan p = plan_layout({r.model, layout, ranks, tc.micro_batch, r.trainable ? accum : 1, cfg.optim.distributed},
                               device);
    FF_CHECK(p.problems.empty(), "the PPO %s cannot use the layout of its ranks: %s", r.name,
             join_problems(p.problems).c_str());
    const double grads = r.trainable ? p.grads : 0, optim = r.trainable ? p.optimizer : 0, activ = p.activations;
    const double sum = p.weights + grads + optim + activ;
    totals[split && r.critic_group ? 1 : 0] += sum;
    s += strprintf("%-14s %10.2fM %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG\n", r.name, count_parameters(r.model) / 1e6,
                   p.weights / gib, grads / gib, optim / gib, activ / gib, sum / gib);
  }
  auto verdict = [&](const char* name, double total) {
    return strprintf("%-14s %11s %9s %9s %9s %9s %8.2fG of %.1fG: %s\n", name, "", "", "", "", "", total / gib,
                     device.memory_gib, total <= device.memory_gib * gib ? "fits" : "does NOT fit");
  };
  if (split) {
    s += verdict("actor group", totals[0]);
    s += verdict("critic group", totals[1]);
  } else {
    s += verdict("all roles", totals[0]);
  }
  return s;
}

}  // namespace ff
