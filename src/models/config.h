// The model's parameter counts and named presets. The ModelConfig field list itself is in
// layers/model_config.h, below the layers that read it.
#pragma once
#include <string>
#include <vector>

#include "layers/model_config.h"

namespace ff {

// Exact number of parameters of the model (one replica, before any sharding).
int64_t count_parameters(const ModelConfig& c);
// Parameters touched by one token in a forward pass (experts counted K times of E).
int64_t count_active_parameters(const ModelConfig& c);

// Named presets: small Llama-, Mixtral-, Qwen2-MoE- and Nemotron-4-style models, plus the full
// Nemotron-4 15B shape (for parameter counting and planning, too large to train here).
ModelConfig model_preset(const std::string& name);
std::vector<std::string> model_preset_names();

}  // namespace ff
