// Preference pairs (specs/methods.md §6.2-6.3): a JSONL file of records
//   {"prompt": "...", "chosen": "...", "rejected": "...", "chosen_reward": 7.5, "rejected_reward": 2}
// (keys: train.sft_prompt_key, pref_chosen_key, pref_rejected_key, pref_*_reward_key; the rewards
// are optional, ground truth for RPO), each response rendered after the prompt by the chat
// template of SFT (train/sft_data.h), so that a response's tokens are the learned ones.
//
// A pair is two samples side by side: sample 2i its chosen sequence, 2i + 1 its rejected one
// (tokens, targets on the response and its end, padding without targets), so an even micro-batch
// holds whole pairs and a pairwise objective (train/preference_objective.h) finds each pair's two
// sequences next to each other. Pairs are shuffled once by the seed. A pair whose prompt leaves
// no response token within model.seq_len is left out (and counted in the summary); a response
// cut at seq_len is counted too. An empty response is an error naming the line.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/data.h"
#include "train/sft_data.h"

namespace ff {

struct PreferencePair {
  SftExample chosen, rejected;
  float chosen_reward = 0, rejected_reward = 0;
  bool has_rewards = false;
};

class PreferenceSamples : public SampleSource {
 public:
  PreferenceSamples(std::vector<PreferencePair> pairs, int32_t pad, uint64_t seed);
  // first and B even: whole pairs.
  void fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
            int64_t first, int64_t B, int64_t S) const override;
  int64_t size() const override { return 2 * static_cast<int64_t>(order_.size()); }
  std::vector<float> sequence_labels(int64_t first, int64_t B) const override;
  const PreferencePair& pair(int64_t sample) const;  // the pair sample `sample` belongs to

 private:
  std::vector<PreferencePair> pairs_;
  std::vector<int64_t> order_;  // pairs in the seeded shuffle
  int32_t pad_;
};

// Reads train.data_path (JSONL) with the run's tokenizer, split by train.split (by position in
// the file) into train and valid pairs. Errors name the file and line.
void open_preference_data(const RunConfig& c, TrainingData& d, std::string& summary);

}  // namespace ff
