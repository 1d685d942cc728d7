// Hugging Face name tables, one per model family (specs/formats.md, style-anchors item 22).
// A rule maps one Hugging Face tensor to the fivefold tensor(s) it is made of:
//   hf        HF name template,
//   internal  fivefold name templates ({L}: block index, {E}: expert index),
//   layout    how the HF tensor is built from them:
//     same       one to one;
//     concat     the internal tensors concatenated along dim 0 (a fused gate/up or qkv
//                projection; split back into equal parts);
//     stack      the HF name has no {E}: one HF tensor holds every expert, stacked along a new
//                leading axis (each entry itself `concat` of the internal list);
//     zero_bias  a bias HF expects and fivefold does not have: written as zeros of the internal
//                weight's row count; on import it must be all zeros;
//   when      the config condition under which the rule applies.
// An HF key no rule produces is an error unless it matches `ignored`; a rule's key that is
// absent is an error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ff {

enum class HfFamily : uint8_t { llama, mixtral, qwen2_moe };
enum class HfLayout : uint8_t { same, concat, stack, zero_bias };
enum class HfWhen : uint8_t { always, untied, shared_expert };

struct HfRule {
  std::string hf;
  std::vector<std::string> internal;
  HfLayout layout = HfLayout::same;
  HfWhen when = HfWhen::always;
};

struct HfTable {
  HfFamily family;
  std::string model_type;    // config.json "model_type"
  std::string architecture;  // config.json "architectures"[0]
  std::vector<HfRule> rules;
  std::vector<std::string> ignored;  // HF key templates that are read and dropped
};

const HfTable& hf_table(HfFamily f);
const char* hf_family_name(HfFamily f);
bool hf_family_from_name(const std::string& s, HfFamily& out);

// Fills a name template: {L} -> block, {E} -> expert.
std::string hf_fill(const std::string& tmpl, int64_t block, int64_t expert);
// True if `name` matches `tmpl` with {L} / {E} standing for non-negative integers.
bool hf_match(const std::string& tmpl, const std::string& name);

}  // namespace ff
