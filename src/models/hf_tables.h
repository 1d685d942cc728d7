// Hugging Face name tables (specs/formats.md, style-anchors item 22). A family's table holds what
// is the family's own: its config.json names, how its blocks are numbered and the model-wide
// tensors (embedding, final norm, head). What each layer is made of is the layer kind's: each
// kind lists its rules per family in its home (models/layer_kind.h, hf_rules).
// A rule maps one Hugging Face tensor to the fivefold tensor(s) it is made of:
//   hf         HF name template ({E}: expert index). A layer kind's rules are relative to the
//              layer's HF block prefix (HfTable::block, e.g. "model.layers.7."); a table's are
//              whole names;
//   internal   fivefold name templates; a layer kind's relative to the layer's own prefix
//              ("model.layers.3.", models/decoder_lm.h layer_prefix);
//   layout     how the HF tensor is built from them:
//     same       one to one;
//     concat     the internal tensors, [rows[k], ...] each, joined along dim 0 into
//                [sum rows, ...] (a fused projection whose parts may differ in size: Mamba2's
//                in_proj z | x | B | C | dt); split back on import by `rows`, which the kind
//                computes from the config, never by guessing equal parts;
//     zero_bias  a bias HF expects and fivefold does not have: written as zeros of the internal
//                weight's row count; on import it must be all zeros;
//   rows       concat: dim 0 of each internal tensor;
//   unit_axis  HF's tensor has an extra axis of size 1 at dim 1 that fivefold's has not: a
//              depthwise Conv1d weight, HF [C, 1, K] = fivefold [C, K] (same values, same order);
//   when       the config condition under which the rule applies.
// An HF key no rule produces is an error unless it matches `ignored`; a rule's key that is
// absent is an error.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ff {

enum class HfFamily : uint8_t { llama, mixtral, qwen2_moe, nemotron_h };
enum class HfLayout : uint8_t { same, concat, zero_bias };
enum class HfWhen : uint8_t { always, untied, shared_expert };

struct HfRule {
  std::string hf;
  std::vector<std::string> internal;
  HfLayout layout = HfLayout::same;
  HfWhen when = HfWhen::always;
  std::vector<int64_t> rows = {};
  bool unit_axis = false;
};

struct HfTable {
  HfFamily family;
  std::string model_type;    // config.json "model_type"
  std::string architecture;  // config.json "architectures"[0]
  std::string block;         // HF name prefix of block {L}: "model.layers.{L}."
  // Llama-like: a block is an attention layer and the MLP/MoE layer after it (layer j is in block
  // j / 2; the pattern alternates "*-" or "*E"). Else (Nemotron-H) each layer is its own block.
  bool paired;
  std::vector<HfRule> input, output;  // model-wide: the embedding before the layers; final norm, head after
  std::vector<std::string> ignored;   // HF key templates that are read and dropped
  // Import: names under alt_root are read as under root (one or the other per model, decided
  // from the files' keys), and renamed[i].first as renamed[i].second (older checkpoints' names).
  std::string root, alt_root;
  std::vector<std::pair<std::string, std::string>> renamed;
};

const HfTable& hf_table(HfFamily f);
const char* hf_family_name(HfFamily f);
bool hf_family_from_name(const std::string& s, HfFamily& out);

// Fills a name template: {L} -> block, {E} -> expert.
std::string hf_fill(const std::string& tmpl, int64_t block, int64_t expert);
// True if `name` matches `tmpl` with {L} / {E} standing for non-negative integers.
bool hf_match(const std::string& tmpl, const std::string& name);

}  // namespace ff
