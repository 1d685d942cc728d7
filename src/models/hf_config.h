// Hugging Face config.json <-> ModelConfig, per family (specs/formats.md): which family a model
// exports as, the config.json it writes, and the model a config.json describes. Every field a
// family cannot express is an export error naming it; every config.json key fivefold cannot
// represent is an import error naming the key and the file.
#pragma once
#include <string>

#include "models/config.h"
#include "models/hf_tables.h"

namespace ff {

// The family a config exports as ("auto": any Mamba2 layer -> nemotron_h; else dense -> llama,
// shared expert -> qwen2_moe, other MoE -> mixtral). Errors list every config field the family
// cannot express.
HfFamily hf_family_for(const ModelConfig& c, const std::string& requested);

// The text of config.json for c in family f. Non-finite numbers are written as Python's json
// module writes them (Infinity: Nemotron-H's time_step_limit = [0.0, Infinity]).
std::string hf_config_text(const ModelConfig& c, HfFamily f, bool bf16);

// The model of dir/config.json alone (and its family). Reads Python's Infinity / NaN too.
ModelConfig import_hf_config(const std::string& dir, HfFamily* family = nullptr);

}  // namespace ff
