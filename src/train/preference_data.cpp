#include "train/preference_data.h"

#include <algorithm>
#include <fstream>
#include <numeric>

#include "core/rng.h"
#include "io/gpt_dataset.h"
#include "io/jsonl.h"
#include "train/preference_objective.h"

namespace ff {

namespace {
// Whether the sequence has a learned token among its first S + 1 (a target within S rows).
bool learns_within(const SftExample& e, int64_t S) {
  for (size_t j = 1; j < e.ids.size() && static_cast<int64_t>(j) <= S; ++j)
    if (e.learn[j]) return true;
  return false;
}

float reward_of(const nlohmann::json& j, const std::string& key, const std::string& where) {
  FF_CHECK(j.contains(key) && j[key].is_number(), "%s: \"%s\" is missing or not a number (RPO needs the ground-truth "
           "reward of both responses; train.pref_*_reward_key name them)", where.c_str(), key.c_str());
  return j[key].get<float>();
}
}  // namespace

PreferenceSamples::PreferenceSamples(std::vector<PreferencePair> pairs, int32_t pad, uint64_t seed)
    : pairs_(std::move(pairs)), pad_(pad) {
  order_.resize(pairs_.size());
  std::iota(order_.begin(), order_.end(), 0);
  Rng rng(seed, "preference-order");
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

const PreferencePair& PreferenceSamples::pair(int64_t sample) const {
  const int64_t n = static_cast<int64_t>(order_.size());
  return pairs_[static_cast<size_t>(order_[static_cast<size_t>((sample / 2) % n)])];
}

void PreferenceSamples::fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets,
                             std::vector<int32_t>& positions, int64_t first, int64_t B, int64_t S) const {
  FF_CHECK(first % 2 == 0 && B % 2 == 0, "preference samples are read in whole pairs (first %lld, B %lld)",
           (long long)first, (long long)B);
  tokens.assign(static_cast<size_t>(B * S), pad_);
  targets.assign(static_cast<size_t>(B * S), -1);
  positions.clear();
  for (int64_t b = 0; b < B; ++b) {
    const PreferencePair& p = pair(first + b);
    const SftExample& e = (first + b) % 2 == 0 ? p.chosen : p.rejected;
    const int64_t len = static_cast<int64_t>(e.ids.size()), n = std::min(len - 1, S);
    for (int64_t j = 0; j < n; ++j) {
      const size_t row = static_cast<size_t>(b * S + j);
      tokens[row] = e.ids[static_cast<size_t>(j)];
      if (e.learn[static_cast<size_t>(j + 1)]) targets[row] = e.ids[static_cast<size_t>(j + 1)];
    }
  }
}

std::vector<float> PreferenceSamples::sequence_labels(int64_t first, int64_t B) const {
  if (pairs_.empty() || !pairs_.front().has_rewards) return {};
  std::vector<float> r(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const PreferencePair& p = pair(first + b);
    r[static_cast<size_t>(b)] = (first + b) % 2 == 0 ? p.chosen_reward : p.rejected_reward;
  }
  return r;
}

void open_preference_data(const RunConfig& c, TrainingData& d, std::string& summary) {
  const auto& tc = c.train;
  const bool rpo = uses_rewards(tc.objective);
  const SftKeys keys{tc.sft_prompt_key, "response", "messages"};
  std::vector<PreferencePair> all;
  int64_t lines = 0, dropped = 0, cut = 0;
  for_each_jsonl(tc.data_path, "train.data_path: the preference file, JSONL, one pair per line",
                 [&](const nlohmann::json& j, const std::string& where) {
    ++lines;
    FF_CHECK(j.is_object(), "%s: a preference pair is a JSON object", where.c_str());
    auto text = [&](const std::string& key) {
      FF_CHECK(j.contains(key) && j[key].is_string(), "%s: \"%s\" is missing or not a string (a pair has \"%s\", "
               "\"%s\" and \"%s\")", where.c_str(), key.c_str(), tc.sft_prompt_key.c_str(), tc.pref_chosen_key.c_str(),
               tc.pref_rejected_key.c_str());
      return j[key].get<std::string>();
    };
    const std::string prompt = text(tc.sft_prompt_key);
    auto render = [&](const std::string& key) {
      const std::string response = text(key);
      FF_CHECK(!response.empty(), "%s: \"%s\" is empty: a pair compares two responses", where.c_str(), key.c_str());
      SftExample e = render_sft_example({{keys.prompt, prompt}, {keys.response, response}}, tc.chat_template, keys,
                                        *d.tokenizer, where);
      for (int32_t id : e.ids)
        FF_CHECK(id < c.model.vocab_size, "%s: token %d is outside model.vocab_size = %lld", where.c_str(), id,
                 (long long)c.model.vocab_size);
      cut += static_cast<int64_t>(e.ids.size()) > c.model.seq_len + 1;
      return e;
    };
    PreferencePair p{render(tc.pref_chosen_key), render(tc.pref_rejected_key)};
    if (rpo) {
      p.chosen_reward = reward_of(j, tc.pref_chosen_reward_key, where);
      p.rejected_reward = reward_of(j, tc.pref_rejected_reward_key, where);
      p.has_rewards = true;
    }
    if (!learns_within(p.chosen, c.model.seq_len) || !learns_within(p.rejected, c.model.seq_len)) {
      ++dropped;  // the prompt fills the sequence: nothing of a response would be seen
      return;
    }
    all.push_back(std::move(p));
  });
  FF_CHECK(!all.empty(), "train.data_path '%s' holds no usable pairs (%lld lines, %lld left out because their prompt "
           "fills model.seq_len = %lld: raise model.seq_len or shorten the prompts)", tc.data_path.c_str(),
           (long long)lines, (long long)dropped, (long long)c.model.seq_len);
  const auto parts = split_documents(tc.split, static_cast<int64_t>(all.size()), "train.split");
  auto part = [&](int k) {
    std::vector<PreferencePair> p(all.begin() + parts[static_cast<size_t>(k)].begin,
                                  all.begin() + parts[static_cast<size_t>(k)].end);
    FF_CHECK(!p.empty(), "train.split = \"%s\" leaves the %s part of '%s' (%zu pairs) without pairs", tc.split.c_str(),
             k == 0 ? "train" : "valid", tc.data_path.c_str(), all.size());
    return p;
  };
  const int32_t pad = d.tokenizer->pad() >= 0 ? d.tokenizer->pad() : std::max(0, d.tokenizer->eod());
  d.train = std::make_unique<PreferenceSamples>(part(0), pad, tc.seed);
  d.valid = std::make_unique<PreferenceSamples>(part(1), pad, tc.seed);
  summary = strprintf("preference data: %s (%zu pairs, train %lld / valid %lld; %lld left out: prompt fills "
                      "model.seq_len = %lld; %lld responses cut at seq_len; template %s)", tc.data_path.c_str(),
                      all.size(), (long long)(d.train->size() / 2), (long long)(d.valid->size() / 2), (long long)dropped,
                      (long long)c.model.seq_len, (long long)cut, enum_to_string(tc.chat_template).c_str());
}

}  // namespace ff
