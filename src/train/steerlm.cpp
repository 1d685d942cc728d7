#include "train/steerlm.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "io/gpt_dataset.h"
#include "io/jsonl.h"
#include "train/pipeline.h"

namespace ff {

std::vector<std::string> attribute_names(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string n; std::getline(ss, n, ',');) {
    n.erase(0, n.find_first_not_of(" \t"));
    n.erase(n.find_last_not_of(" \t") + 1);
    FF_CHECK(!n.empty() && n.find(':') == std::string::npos, "train.steerlm_attributes = \"%s\": give names separated "
             "by commas (no empty names, no ':')", list.c_str());
    out.push_back(n);
  }
  return out;
}

std::vector<float> record_attributes(const nlohmann::json& record, const std::vector<std::string>& names,
                                     const std::string& where) {
  const nlohmann::json& src = record.contains("attributes") ? record["attributes"] : record;
  std::vector<float> out;
  for (const auto& n : names) {
    if (!src.contains(n) || src[n].is_null()) {
      out.push_back(kNoLabel);
      continue;
    }
    FF_CHECK(src[n].is_number(), "%s: attribute \"%s\" = %s is not a number", where.c_str(), n.c_str(),
             src[n].dump().c_str());
    out.push_back(src[n].get<float>());
  }
  return out;
}

std::string attribute_string(const std::vector<std::string>& names, const std::vector<float>& values) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) {
    if (values[i] == kNoLabel) continue;
    s += (s.empty() ? "" : ",") + names[i] + ":" + std::to_string(static_cast<int64_t>(std::lround(values[i])));
  }
  return s;
}

std::map<std::string, int64_t> parse_attribute_string(const std::string& s) {
  std::map<std::string, int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    const auto colon = item.find(':');
    FF_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < item.size(), "attribute string \"%s\": \"%s\" is "
             "not name:value", s.c_str(), item.c_str());
    const std::string value = item.substr(colon + 1);
    FF_CHECK(value.find_first_not_of("-0123456789") == std::string::npos, "attribute string \"%s\": \"%s\" is not an "
             "integer", s.c_str(), value.c_str());
    out[item.substr(0, colon)] = std::stoll(value);
  }
  return out;
}

std::vector<float> AttributeSamples::sequence_labels(int64_t first, int64_t B) const {
  std::vector<float> out;
  for (int64_t b = 0; b < B; ++b) {
    const auto& l = labels_[static_cast<size_t>(sft_.examples_of(first + b).front())];
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

void open_attribute_data(const RunConfig& c, TrainingData& d, std::string& summary) {
  const auto& tc = c.train;
  const auto names = attribute_names(tc.steerlm_attributes);
  const SftKeys keys{tc.sft_prompt_key, tc.sft_response_key, tc.sft_messages_key};
  std::vector<SftExample> examples;
  std::vector<std::vector<float>> labels;
  int64_t labelled = 0;
  for_each_jsonl(tc.data_path, "train.data_path: the attribute data, JSONL records with prompt, response and "
                 "attribute values", [&](const nlohmann::json& j, const std::string& where) {
    examples.push_back(render_sft_example(j, tc.chat_template, keys, *d.tokenizer, where));
    labels.push_back(record_attributes(j, names, where));
    for (float v : labels.back()) labelled += v != kNoLabel;
  });
  FF_CHECK(!examples.empty(), "train.data_path '%s' holds no records", tc.data_path.c_str());
  const auto parts = split_documents(tc.split, static_cast<int64_t>(examples.size()), "train.split");
  auto part = [&](int k, auto& v) {
    using V = std::decay_t<decltype(v)>;
    V p(v.begin() + parts[static_cast<size_t>(k)].begin, v.begin() + parts[static_cast<size_t>(k)].end);
    FF_CHECK(!p.empty(), "train.split = \"%s\" leaves the %s part of '%s' (%zu records) empty", tc.split.c_str(),
             k == 0 ? "train" : "valid", tc.data_path.c_str(), v.size());
    return p;
  };
  const int32_t pad = d.tokenizer->pad() >= 0 ? d.tokenizer->pad() : std::max(0, d.tokenizer->eod());
  d.train = std::make_unique<AttributeSamples>(part(0, examples), part(0, labels), pad, tc.seed);
  d.valid = std::make_unique<AttributeSamples>(part(1, examples), part(1, labels), pad, tc.seed);
  summary = strprintf("attribute data: %s (%zu records, %lld labels of %zu attributes: %s; train %lld / valid %lld)",
                      tc.data_path.c_str(), examples.size(), (long long)labelled, names.size(),
                      tc.steerlm_attributes.c_str(), (long long)d.train->size(), (long long)d.valid->size());
}

ObjectiveValue AttributeRegression::evaluate(const HeadRows& in, float* dvalue) const {
  const int64_t B = in.B, S = in.S, K = in.width;
  const auto m = static_cast<size_t>(in.micro_batch);
  FF_CHECK(labels_ && m < labels_->size() && static_cast<int64_t>((*labels_)[m].size()) == B * K,
           "attribute regression: micro-batch %lld has %zu labels, its %lld sequences of %lld attributes need %lld",
           (long long)in.micro_batch, labels_ && m < labels_->size() ? (*labels_)[m].size() : size_t(0), (long long)B,
           (long long)K, (long long)(B * K));
  const auto& y = (*labels_)[m];
  std::vector<int64_t> at;
  const auto v = last_row_values(in, at);
  std::vector<double> rows(static_cast<size_t>(B), 0.0);  // targets per sequence, over the CP ranks
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) rows[static_cast<size_t>(b)] += in.targets[b * S + s] >= 0;
  if (in.cp) in.cp->all_reduce_sum(rows.data(), B);
  std::fill(dvalue, dvalue + B * S * K, 0.0f);
  ObjectiveValue out;
  const double scale = total_ > 0 ? 1.0 / total_ : 0.0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) {
      const size_t i = static_cast<size_t>(b * K + k);
      if (y[i] == kNoLabel || rows[static_cast<size_t>(b)] == 0) continue;  // unlabelled, or nothing read
      const double e = v[i] - y[i];
      out.loss += e * e * scale;
      out.tokens += 1;  // labelled entries
      if (at[static_cast<size_t>(b)] >= 0) dvalue[at[static_cast<size_t>(b)] * K + k] = static_cast<float>(2 * e * scale);
    }
  return out;
}

int64_t step_label_count(const std::vector<std::vector<float>>& labels, const Communicator& dp) {
  int64_t n = 0;
  for (const auto& l : labels)
    for (float v : l) n += v != kNoLabel;
  dp.all_reduce_sum(&n, 1);
  return n;
}

namespace {
// Records each sequence's last-row values of one micro-batch (no gradient).
class LastValues : public TokenObjective {
 public:
  explicit LastValues(std::vector<double>& out) : out_(out) {}
  ObjectiveValue evaluate(const HeadRows& in, float* dvalue) const override {
    std::vector<int64_t> at;
    out_ = last_row_values(in, at);
    std::fill(dvalue, dvalue + in.B * in.S * in.width, 0.0f);
    return {};
  }

 private:
  std::vector<double>& out_;
};
}  // namespace

std::vector<std::vector<int64_t>> annotate_attributes(DecoderLM& model, const ParallelGrid& grid, const Tokenizer& tok,
                                                      const std::vector<nlohmann::json>& records, ChatTemplate t,
                                                      const SftKeys& keys, int64_t micro_batch) {
  const int64_t K = model.config().value_outputs, S = model.config().seq_len, B = micro_batch;
  std::vector<SftExample> examples;
  for (size_t i = 0; i < records.size(); ++i)
    examples.push_back(render_sft_example(records[i], t, keys, tok, strprintf("record %zu", i + 1)));
  const int32_t pad = tok.pad() >= 0 ? tok.pad() : std::max(0, tok.eod());
  // One example per sample in file order: a seed of 0 still shuffles, so index by the samples'
  // own examples instead of assuming the order.
  const SftSamples samples(examples, pad, 0);
  PipelineExecutor pipe(model, grid, 1);
  std::vector<std::vector<int64_t>> out(records.size(), std::vector<int64_t>(static_cast<size_t>(K), 0));
  std::vector<int32_t> tokens, targets, positions;
  const int64_t n = samples.size();
  for (int64_t first = 0; first < n; first += B) {
    samples.fill(tokens, targets, positions, first, B, S);
    for (int64_t r = std::max<int64_t>(0, n - first); r < B; ++r)  // past the end: no targets
      std::fill(targets.begin() + r * S, targets.begin() + (r + 1) * S, -1);
    std::vector<double> v;
    pipe.evaluate(tokens, targets, B, S, LastValues(v), &positions);
    if (grid.pp().size() > 1) {  // the values live on the last stage
      v.resize(static_cast<size_t>(B * K));
      grid.pp().broadcast(v.data(), static_cast<int64_t>(sizeof(double) * v.size()), grid.pp().size() - 1);
    }
    for (int64_t b = 0; b < B && first + b < n; ++b) {
      const size_t e = static_cast<size_t>(samples.examples_of(first + b).front());
      for (int64_t k = 0; k < K; ++k)  // clipped to [0, 4] and rounded (§6.5)
        out[e][static_cast<size_t>(k)] =
            std::lround(std::clamp(v[static_cast<size_t>(b * K + k)], 0.0, 4.0));
    }
  }
  return out;
}

}  // namespace ff
