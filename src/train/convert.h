// `fivefold convert`: Hugging Face export of a checkpoint (or a model file written by train), and
// import of a Hugging Face folder into a fivefold model file (usable by generate, convert).
#pragma once
#include <cstdint>
#include <string>

namespace ff {

struct ConvertOptions {
  std::string to;          // "hf": export
  std::string from;        // "hf": import
  std::string checkpoint;  // export source: checkpoint folder, save folder (its `latest`) or model .safetensors
  std::string in;          // import source: Hugging Face folder
  std::string out;         // export: folder; import: model .safetensors file
  std::string family = "auto";
  std::string dtype = "f32";     // export dtype: f32 (exact) or bf16
  int64_t max_shard_mb = 5120;   // export: shard past this size
  bool merge_lora = false;       // export: fold LoRA adapters into the weights (required when the model has them)
};

void run_convert(const ConvertOptions& o);

}  // namespace ff
