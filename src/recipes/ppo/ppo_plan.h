// `fivefold plan` for `align ppo` (train.reward_model set): the memory each of PPO's roles takes on
// the most loaded rank of the layout, from the plan of each role's model (train/plan.h). The
// actor and the critic hold weights, gradients, Adam moments and a training step's activations;
// the frozen reference and reward model their weights and one forward's activations (the scoring
// passes). Under LoRA without train.reference there is no reference copy.
#pragma once
#include <string>

#include "train/config.h"
#include "train/plan.h"

namespace ff {

std::string ppo_plan_table(const RunConfig& cfg, int64_t world, const DeviceSpec& device);

}  // namespace ff
