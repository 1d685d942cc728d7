// Hugging Face import and export for the Llama (dense), Mixtral (MoE), Qwen2-MoE (shared expert)
// and Nemotron-H (Mamba2 + attention + squared-ReLU MLP) layouts: config.json <-> ModelConfig
// (models/hf_config.h), and tensors renamed and transformed by the rules of the family's table
// (models/hf_tables.h) and of each layer's kind (models/layer_kind.h). Output is
// model.safetensors, or model-0000i-of-0000n.safetensors shards with
// model.safetensors.index.json past max_shard_bytes.
// fivefold's RoPE is the rotate-half layout of HF's Llama code, so q/k need no permutation.
// Nemotron-H is written under "backbone." (NVIDIA's checkpoints and remote code; transformers'
// port renames it to "model." on load); either root is read.
// Export with F32 (the default) is exact: to HF and back is bit-identical.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "models/hf_config.h"
#include "models/hf_tables.h"

namespace ff {

using TensorMap = std::map<std::string, HostTensor>;

struct HfExportOptions {
  std::string family = "auto";  // llama | mixtral | qwen2_moe | nemotron_h | auto (from the config)
  bool bf16 = false;            // write BF16 (rounded to nearest even) instead of F32
  int64_t max_shard_bytes = int64_t(5) << 30;
  bool progress = false;        // a progress line with an ETA on stderr while writing (the caller: a terminal)
};

// Writes config.json and the safetensors file(s) into out_dir. Every fivefold tensor must be
// used by the rules (an expert-bias buffer, say, has no HF name: error).
void export_hf(const ModelConfig& c, const TensorMap& tensors, const std::string& out_dir,
               const HfExportOptions& options);

struct HfImport {
  HfFamily family;
  ModelConfig model;
  TensorMap tensors;  // fivefold global names
};
// Reads dir/config.json and the weights (single file or index + shards; F32, BF16, F16).
HfImport import_hf(const std::string& dir);

}  // namespace ff
