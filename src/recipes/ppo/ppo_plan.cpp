#include "recipes/ppo/ppo_plan.h"

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
  std::vector<Role> roles = {{"actor", cfg.model, true}};
  roles.push_back({"critic", from(tc.critic_init.empty() ? tc.reward_model : tc.critic_init, true), true});
  if (cfg.model.lora_rank == 0 || !tc.reference.empty()) {
    ModelConfig r = tc.reference.empty() ? cfg.model : from(tc.reference, false);
    r.lora_rank = 0;
    roles.push_back({"reference", r, false});
  }
  roles.push_back({"reward model", from(tc.reward_model, false), false});
  const double gib = 1024.0 * 1024 * 1024;
  // Each role's most loaded rank; their sum bounds any one rank's.
  std::string s = strprintf("PPO roles on this layout (each role's most loaded rank):\n%-14s %11s %9s %9s %9s %9s %9s\n", "role",
                            "parameters", "weights", "grads", "optim", "activ", "total");
  double total = 0;
  for (const Role& r : roles) {
    // A frozen role scores one micro-batch at a time: one activation record, no gradients or moments.
    const Plan p = plan_layout({r.model, cfg.parallel, world, tc.micro_batch, r.trainable ? tc.grad_accum : 1,
                                cfg.optim.distributed}, device);
    FF_CHECK(p.problems.empty(), "the PPO %s cannot use this layout: %s", r.name, join_problems(p.problems).c_str());
    const double grads = r.trainable ? p.grads : 0, optim = r.trainable ? p.optimizer : 0, activ = p.activations;
    const double sum = p.weights + grads + optim + activ;
    total += sum;
    s += strprintf("%-14s %10.2fM %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG\n", r.name, count_parameters(r.model) / 1e6,
                   p.weights / gib, grads / gib, optim / gib, activ / gib, sum / gib);
  }
  s += strprintf("%-14s %11s %9s %9s %9s %9s %8.2fG of %.1fG: %s\n", "all roles", "", "", "", "", "", total / gib,
                 device.memory_gib, total <= device.memory_gib * gib ? "fits" : "does NOT fit");
  return s;
}

}  // namespace ff
