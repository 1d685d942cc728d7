// SteerLM (specs/methods.md §6.5), the pieces its four steps are made of:
//   1. an attribute model: a value head with one output per attribute (model.value_outputs),
//      trained on SFT records with attribute values (data_format attributes, objective
//      attribute_regression): the squared error of each labelled attribute at the response's last
//      row, a mean over the step's labels; a label of -100, or none, is ignored;
//   2. annotation: the attribute model's predictions for every record of a data set, clipped to
//      [0, 4] and rounded to integers (annotate_attributes);
//   3. attribute-conditioned SFT: SFT records whose attributes are written after NeMo's assistant
//      header as "<extra_id_2>name:value,name:value\n" (not learned), train.steerlm_attributes
//      naming them in order;
//   4. generation with a requested attribute string (chat_prompt's attributes).
// Records: {"prompt": ..., "response": ..., "quality": 4, ...} or the values in an "attributes"
// object; the names are train.steerlm_attributes.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/decoder_lm.h"
#include "parallel/grid.h"
#include "train/data.h"
#include "train/objective.h"
#include "train/sft_data.h"

namespace ff {

constexpr float kNoLabel = -100.0f;

// train.steerlm_attributes as a list; empty names are errors.
std::vector<std::string> attribute_names(const std::string& list);
// A record's attribute values in the order of `names` (kNoLabel where it has none); where: "FILE
// line N" for errors (a value that is not a number).
std::vector<float> record_attributes(const nlohmann::json& record, const std::vector<std::string>& names,
                                     const std::string& where);
// "name:value,..." of the labelled attributes, values as integers; and back.
std::string attribute_string(const std::vector<std::string>& names, const std::vector<float>& values);
std::map<std::string, int64_t> parse_attribute_string(const std::string& s);

// Step 1's samples: SFT records (response learned) with K = names.size() labels per sequence.
class AttributeSamples : public SampleSource {
 public:
  // labels[e]: example e's K values.
  AttributeSamples(std::vector<SftExample> examples, std::vector<std::vector<float>> labels, int32_t pad, uint64_t seed)
      : sft_(std::move(examples), pad, seed), labels_(std::move(labels)) {}
  void fill(std::vector<int32_t>& tokens, std::vector<int32_t>& targets, std::vector<int32_t>& positions,
            int64_t first, int64_t B, int64_t S) const override {
    sft_.fill(tokens, targets, positions, first, B, S);
  }
  int64_t size() const override { return sft_.size(); }
  std::vector<float> sequence_labels(int64_t first, int64_t B) const override;

 private:
  SftSamples sft_;  // one example per sample, in its seeded order
  std::vector<std::vector<float>> labels_;
};
void open_attribute_data(const RunConfig& c, TrainingData& d, std::string& summary);

// Step 1's objective: sum over labelled (sequence, attribute) of (v - y)^2 / total_labels.
class AttributeRegression : public TokenObjective {
 public:
  // labels[m]: micro-batch m's [B, K] labels (HeadRows::micro_batch).
  AttributeRegression(double total_labels, const std::vector<std::vector<float>>* labels)
      : total_(total_labels), labels_(labels) {}
  ObjectiveValue evaluate(const HeadRows& in, float* dvalue) const override;

 private:
  double total_;
  const std::vector<std::vector<float>>* labels_;
};
// The labelled entries of a step's label vectors, summed over the data-parallel group.
int64_t step_label_count(const std::vector<std::vector<float>>& labels, const Communicator& dp);

// Step 2: the attribute model's predictions for each record of `records` (JSON objects with the
// prompt and response), clipped to [0, 4] and rounded; collective over the grid.
std::vector<std::vector<int64_t>> annotate_attributes(DecoderLM& model, const ParallelGrid& grid, const Tokenizer& tok,
                                                      const std::vector<nlohmann::json>& records, ChatTemplate t,
                                                      const SftKeys& keys, int64_t micro_batch);

}  // namespace ff
