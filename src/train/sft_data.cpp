#include "train/sft_data.h"

#include <algorithm>
#include <fstream>
#include <numeric>

#include "core/rng.h"
#include "io/gpt_dataset.h"
#include "io/jsonl.h"
#include "train/steerlm.h"

namespace ff {

namespace {
constexpr EnumName<DataFormat> kFormats[] = {
    {DataFormat::pretrain, "pretrain"}, {DataFormat::sft, "sft"}, {DataFormat::preference, "preference"},
    {DataFormat::attributes, "attributes"}};
constexpr EnumName<ChatTemplate> kTemplates[] = {{ChatTemplate::none, "none"},
                                                 {ChatTemplate::chatml, "chatml"},
                                                 {ChatTemplate::llama3, "llama3"},
                                                 {ChatTemplate::nemo, "nemo"}};

struct Message {
  std::string role, content;
};

struct Piece {
  std::string text;
  bool learn;
};

// attributes: SteerLM's conditioning (nemo only): "<extra_id_2>" + the string + "\n" after each
// assistant header, not learned; empty: none.
std::vector<Piece> render(const std::vector<Message>& messages, ChatTemplate t, const std::string& attributes = "") {
  std::vector<Piece> out;
  if (t == ChatTemplate::llama3) out.push_back({"<|begin_of_text|>", false});
  bool system_seen = false;
  for (const Message& m : messages) {
    const bool assistant = m.role == "assistant";
    switch (t) {
      case ChatTemplate::none: out.push_back({m.content, assistant}); break;
      case ChatTemplate::chatml:
        out.push_back({"<|im_start|>" + m.role + "\n", false});
        out.push_back({m.content, assistant});
        out.push_back({"<|im_end|>", assistant});
        out.push_back({"\n", false});
        break;
      case ChatTemplate::llama3:
        out.push_back({"<|start_header_id|>" + m.role + "<|end_header_id|>\n\n", false});
        out.push_back({m.content, assistant});
        out.push_back({"<|eot_id|>", assistant});
        break;
      case ChatTemplate::nemo:
        if (m.role == "system") {
          out.push_back({"<extra_id_0>System\n" + m.content + "\n\n", false});
          system_seen = true;
          break;
        }
        if (!system_seen) {  // NeMo's template always opens with the (possibly empty) system turn
          out.push_back({"<extra_id_0>System\n\n\n", false});
          system_seen = true;
        }
        out.push_back({std::string("<extra_id_1>") + (assistant ? "Assistant" : "User") + "\n", false});
        if (assistant && !attributes.empty()) out.push_back({"<extra_id_2>" + attributes + "\n", false});
        out.push_back({m.content, assistant});
        out.push_back({"\n", assistant});
        break;
    }
  }
  return out;
}
}  // namespace

std::span<const EnumName<ChatTemplate>> enum_names(ChatTemplate) { return kTemplates; }
std::span<const EnumName<DataFormat>> enum_names(DataFormat) { return kFormats; }

SftExample render_sft_example(const nlohmann::json& record, ChatTemplate t, const SftKeys& keys, const Tokenizer& tok,
                              const std::string& where, const std::string& attributes) {
  FF_CHECK(attributes.empty() || t == ChatTemplate::nemo, "%s: SteerLM's attribute string goes after NeMo's assistant "
           "header: use train.chat_template nemo", where.c_str());
  FF_CHECK(record.is_object(), "%s: an SFT example is a JSON object", where.c_str());
  std::vector<Message> messages;
  auto text_of = [&](const nlohmann::json& o, const std::string& k, const char* what) {
    FF_CHECK(o.contains(k) && o[k].is_string(), "%s: %s \"%s\" is missing or not a string", where.c_str(), what,
             k.c_str());
    return o[k].get<std::string>();
  };
  if (record.contains(keys.messages)) {
    FF_CHECK(t != ChatTemplate::none, "%s: \"%s\" needs a chat template (train.chat_template chatml, llama3 or nemo)",
             where.c_str(), keys.messages.c_str());
    const auto& ms = record[keys.messages];
    FF_CHECK(ms.is_array() && !ms.empty(), "%s: \"%s\" must be a non-empty array of {role, content}", where.c_str(),
             keys.messages.c_str());
    for (const auto& m : ms) {
      const std::string role = text_of(m, "role", "message field");
      FF_CHECK(role == "system" || role == "user" || role == "assistant", "%s: role \"%s\": must be system, user or "
               "assistant", where.c_str(), role.c_str());
      messages.push_back({role, text_of(m, "content", "message field")});
    }
  } else {
    FF_CHECK(record.contains(keys.prompt) || record.contains(keys.response), "%s: the example has neither \"%s\" nor "
             "\"%s\" and \"%s\" (train.sft_*_key name them)", where.c_str(), keys.messages.c_str(),
             keys.prompt.c_str(), keys.response.c_str());
    messages.push_back({"user", text_of(record, keys.prompt, "field")});
    messages.push_back({"assistant", text_of(record, keys.response, "field")});
  }
  bool any = false;
  for (const auto& m : messages) any = any || m.role == "assistant";
  FF_CHECK(any, "%s: the example has no assistant turn to learn", where.c_str());
  SftExample e;
  for (const Piece& p : render(messages, t, attributes)) {
    const auto ids = tok.encode(p.text);
    e.ids.insert(e.ids.end(), ids.begin(), ids.end());
    e.learn.insert(e.learn.end(), ids.size(), p.learn ? 1 : 0);
  }
  if (tok.eod() >= 0) {
    e.ids.push_back(tok.eod());
    e.learn.push_back(1);
  }
  return e;
}

std::string chat_prompt(const std::string& user, ChatTemplate t, const std::string& attributes) {
  FF_CHECK(attributes.empty() || t == ChatTemplate::nemo, "SteerLM's attribute string goes after NeMo's assistant "
           "header: use --chat_template nemo");
  std::string s;
  for (const Piece& p : render({{"user", user}, {"assistant", ""}}, t, attributes)) {
    if (p.learn) break;  // up to the assistant's content
    s += p.text;
  }
  return s;
}

SftSamples::SftSamples(std::vector<SftExample> examples, int32_t pad, uint64_t seed, int64_t pack_len)
    : examples_(std::move(examples)), pad_(pad), pack_len_(pack_len) {
  std::vector<int64_t> order(examples_.size());
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed, "sft-order");
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  int64_t used = 0;  // tokens in the last sample so far
  for (int64_t e : order) {
    const int64_t len = static_cast<int64_t>(examples_[static_cast<size_t>(e)].ids.size());
    if (pack_len_ > 0 && !bins_.empty() && used + len <= pack_len_) {
      bins_.back().push_back(e);
      used += len;
    } else {
      bins_.push_back({e});
      used = len;
    }
  }
}

void SftSamples::fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
                      int64_t first, int64_t B, int64_t S) const {
  FF_CHECK(pack_len_ == 0 || S == pack_len_, "SFT samples packed to %lld tokens read with S = %lld",
           (long long)pack_len_, (long long)S);
  tokens.assign(static_cast<size_t>(B * S), pad_);
  targets.assign(static_cast<size_t>(B * S), -1);
  positions.clear();
  if (pack_len_ > 0) positions.assign(static_cast<size_t>(B * S), 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t row = b * S;
    for (int64_t k : bins_[static_cast<size_t>((first + b) % size())]) {
      const SftExample& e = examples_[static_cast<size_t>(k)];
      const int64_t len = static_cast<int64_t>(e.ids.size());
      // Packed: the example's tokens at positions 0 ..; its last token has no target in it.
      // One per sample: its first S tokens, each with the next token as target where learned.
      const int64_t n = std::min(pack_len_ > 0 ? len : len - 1, b * S + S - row);
      for (int64_t j = 0; j < n; ++j, ++row) {
        tokens[static_cast<size_t>(row)] = e.ids[static_cast<size_t>(j)];
        if (j + 1 < len && e.learn[static_cast<size_t>(j + 1)]) targets[static_cast<size_t>(row)] = e.ids[static_cast<size_t>(j + 1)];
        if (pack_len_ > 0) positions[static_cast<size_t>(row)] = static_cast<int32_t>(j);
      }
    }
    // Padding continues as a segment of its own (positions from 0), without targets.
    for (int32_t p = 0; pack_len_ > 0 && row < b * S + S; ++row, ++p) positions[static_cast<size_t>(row)] = p;
  }
}

void open_sft_data(const RunConfig& c, TrainingData& d, std::string& summary) {
  const auto& tc = c.train;
  const SftKeys keys{tc.sft_prompt_key, tc.sft_response_key, tc.sft_messages_key};
  const std::vector<std::string> names =
      tc.steerlm_attributes.empty() ? std::vector<std::string>{} : attribute_names(tc.steerlm_attributes);
  std::vector<SftExample> all;
  int64_t truncated = 0, learned = 0, tokens = 0;
  for_each_jsonl(tc.data_path, "train.data_path: the SFT file, JSONL, one example per line",
                 [&](const nlohmann::json& j, const std::string& where) {
    // SteerLM: the record's attributes, written after the assistant header (train/steerlm.h).
    const std::string attributes =
        names.empty() ? std::string() : attribute_string(names, record_attributes(j, names, where));
    SftExample e = render_sft_example(j, tc.chat_template, keys, *d.tokenizer, where, attributes);
    for (int32_t id : e.ids)
      FF_CHECK(id < c.model.vocab_size, "%s: token %d is outside model.vocab_size = %lld", where.c_str(), id,
               (long long)c.model.vocab_size);
    truncated += static_cast<int64_t>(e.ids.size()) > c.model.seq_len + 1;
    for (size_t i = 1; i < e.ids.size() && static_cast<int64_t>(i) <= c.model.seq_len; ++i) learned += e.learn[i];
    tokens += static_cast<int64_t>(e.ids.size());
    all.push_back(std::move(e));
  });
  FF_CHECK(!all.empty(), "train.data_path '%s' holds no examples", tc.data_path.c_str());
  // Without a learned token the loss is 0 and nothing trains: refuse rather than run.
  FF_CHECK(learned > 0, "train.data_path '%s': no example has a token to learn within model.seq_len = %lld: the "
           "prompts fill the sequences (%lld of %zu examples cut); raise model.seq_len or shorten the prompts",
           tc.data_path.c_str(), (long long)c.model.seq_len, (long long)truncated, all.size());
  const auto parts = split_documents(tc.split, static_cast<int64_t>(all.size()), "train.split");
  auto part = [&](int k) {
    std::vector<SftExample> p(all.begin() + parts[static_cast<size_t>(k)].begin, all.begin() + parts[static_cast<size_t>(k)].end);
    FF_CHECK(!p.empty(), "train.split = \"%s\" leaves the %s part of '%s' (%zu examples) without examples",
             tc.split.c_str(), k == 0 ? "train" : "valid", tc.data_path.c_str(), all.size());
    return p;
  };
  const int32_t pad = d.tokenizer->pad() >= 0 ? d.tokenizer->pad() : std::max(0, d.tokenizer->eod());
  const int64_t pack = tc.sft_pack ? c.model.seq_len : 0;
  d.train = std::make_unique<SftSamples>(part(0), pad, tc.seed, pack);
  d.valid = std::make_unique<SftSamples>(part(1), pad, tc.seed, pack);
  summary = strprintf("SFT data: %s (%zu examples, %lld tokens, %lld learned within seq_len; %lld cut at seq_len + 1; "
                      "template %s; train %lld / valid %lld samples%s)", tc.data_path.c_str(), all.size(),
                      (long long)tokens, (long long)learned, (long long)truncated,
                      enum_to_string(tc.chat_template).c_str(), (long long)d.train->size(), (long long)d.valid->size(),
                      tc.sft_pack ? ", packed" : "");
}

}  // namespace ff
