// Supervised fine-tuning data (specs/methods.md §6.1): a JSONL file of examples, each either
//   {"prompt": "...", "response": "..."}                      (keys: train.sft_prompt_key / sft_response_key)
//   {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}  (train.sft_messages_key)
// rendered by a named chat template into text pieces, each piece tokenised on its own so that a
// token is known to belong to what the model learns to produce (the assistant's turns and the
// end-of-turn marker after each) or not (the system, the user and the headers). The loss is on
// the learned tokens only; the tokenizer's EOD closes every example and is learned too.
// Templates:
//   none     prompt, then response (prompt/response records only)
//   chatml   <|im_start|>ROLE\nCONTENT<|im_end|>\n per message
//   llama3   <|begin_of_text|>, then <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
//   nemo     <extra_id_0>System\nSYSTEM\n\n, then <extra_id_1>User\nCONTENT\n and
//            <extra_id_1>Assistant\nCONTENT\n (NeMo's SFT and SteerLM template)
// A sample is one example cut or padded to S + 1 tokens (tokens: its first S, targets: the next
// token where that token is learned, else -1); padding is never learned. With train.sft_pack,
// consecutive examples (in the shuffled order) share a sample as long as they fit in S tokens:
// each keeps its own positions, restarting at 0, and attends only to itself, so a packed batch
// computes what the examples one by one would, with less padding.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "parallel/comm.h"
#include "train/data.h"

namespace ff {

struct SftExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> learn;  // [ids.size()] 1: a token the model learns to produce
};

struct SftKeys {
  std::string prompt = "prompt", response = "response", messages = "messages";
};

// One record rendered and tokenised; `where` ("FILE line N") names it in errors. attributes:
// SteerLM's attribute string (train/steerlm.h), placed after each assistant header as
// "<extra_id_2>STRING\n" and not learned (the nemo template only); empty: none.
SftExample render_sft_example(const nlohmann::json& record, ChatTemplate t, const SftKeys& keys, const Tokenizer& tok,
                              const std::string& where, const std::string& attributes = "");
// What a model is prompted with at inference: the user's text in the template, up to the
// assistant's turn (the text the model then continues), with SteerLM's attribute string if given.
std::string chat_prompt(const std::string& user, ChatTemplate t, const std::string& attributes = "");

// The examples of one part of the file, as samples of S tokens.
class SftSamples : public SampleSource {
 public:
  // pack_len > 0: pack examples into samples of pack_len tokens (fill's S must then equal it).
  SftSamples(std::vector<SftExample> examples, int32_t pad, uint64_t seed, int64_t pack_len = 0);
  void fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
            int64_t first, int64_t B, int64_t S) const override;
  int64_t size() const override { return static_cast<int64_t>(bins_.size()); }
  const std::vector<SftExample>& examples() const { return examples_; }
  // The examples sample `sample` holds (modulo size()), by index into examples().
  const std::vector<int64_t>& examples_of(int64_t sample) const { return bins_[static_cast<size_t>(sample % size())]; }

 private:
  std::vector<SftExample> examples_;
  std::vector<std::vector<int64_t>> bins_;  // examples of each sample, from a seeded shuffle (every epoch alike)
  int32_t pad_;
  int64_t pack_len_;
};

// Reads train.data_path (JSONL) with the run's tokenizer; the examples split by train.split
// (by position in the file) into train and valid. Errors name the file and line.
void open_sft_data(const RunConfig& c, TrainingData& d, std::string& summary);

}  // namespace ff
