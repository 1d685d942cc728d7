// Hugging Face import and export for the Llama (dense), Mixtral (MoE) and Qwen2-MoE (shared
// expert) layouts: config.json <-> ModelConfig, and tensors renamed and transformed by the
// family's table (io/hf_tables.h). Output is model.safetensors, or model-0000i-of-0000n
// .safetensors shards with model.safetensors.index.json past max_shard_bytes.
// fivefold's RoPE is the rotate-half layout of HF's Llama code, so q/k need no permutation.
// Export with F32 (the default) is exact: to HF and back is bit-identical.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/hf_tables.h"
#include "io/safetensors.h"
#include "models/config.h"

namespace ff {

using TensorMap = std::map<std::string, HostTensor>;

struct HfExportOptions {
  std::string family = "auto";  // llama | mixtral | qwen2_moe | auto (from the config)
  bool bf16 = false;            // write BF16 (rounded to nearest even) instead of F32
  int64_t max_shard_bytes = int64_t(5) << 30;
};

// The family a config exports as ("auto": dense -> llama, shared expert -> qwen2_moe, else
// mixtral). Errors list every config field the family cannot express.
HfFamily hf_family_for(const ModelConfig& c, const std::string& requested);

// Writes config.json and the safetensors file(s) into out_dir. Every fivefold tensor must be
// used by the table (an expert-bias buffer, say, has no HF name: error).
void export_hf(const ModelConfig& c, const TensorMap& tensors, const std::string& out_dir,
               const HfExportOptions& options);

struct HfImport {
  HfFamily family;
  ModelConfig model;
  TensorMap tensors;  // fivefold global names
};
// The model of dir/config.json alone (and its family).
ModelConfig import_hf_config(const std::string& dir, HfFamily* family = nullptr);
// Reads out_dir/config.json and the weights (single file or index + shards; F32, BF16, F16).
HfImport import_hf(const std::string& dir);

}  // namespace ff
