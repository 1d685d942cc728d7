// LoRA adapters out of a model (specs/methods.md §6.7): merged into the base weights,
// W' = W + (alpha / r) B A for every adapted projection, or split off on their own.
#pragma once
#include <map>
#include <string>

#include "models/hf_convert.h"
#include "layers/linear.h"
#include "train/config.h"

namespace ff {

// The tensors of a model with adapters (global shapes) -> the same model without them: each
// "<p>.lora_A.weight" / "<p>.lora_B.weight" pair folded into "<p>.weight". The config's
// lora_rank becomes 0 (the result is a plain model).
void merge_lora(ModelConfig& c, TensorMap& tensors);

// Only the adapter tensors, for a file of adapters alone.
TensorMap lora_tensors(const TensorMap& tensors);

}  // namespace ff
