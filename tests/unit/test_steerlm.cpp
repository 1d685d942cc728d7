// SteerLM (train/steerlm.h; tests of §6.9): the attribute string round-trips; records name their
// attributes at the top level or in "attributes", a missing one is -100; the attribute model's
// squared error ignores -100 labels (value and gradient) and reads each sequence's last row with a
// target; conditioned SFT writes the string after the assistant header, not learned.
#include <gtest/gtest.h>

#include <cmath>

#include "io/tokenizer.h"
#include "train/steerlm.h"

namespace ff {
namespace {

TEST(SteerLm, AttributeStringsRoundTrip) {
  const std::vector<std::string> names = {"quality", "toxicity", "humor"};
  const std::string s = attribute_string(names, {4, kNoLabel, 0.6f});
  EXPECT_EQ(s, "quality:4,humor:1");
  const auto back = parse_attribute_string(s);
  EXPECT_EQ(back, (std::map<std::string, int64_t>{{"quality", 4}, {"humor", 1}}));
  EXPECT_EQ(attribute_string(names, {0, 1, 2}), "quality:0,toxicity:1,humor:2");
  EXPECT_EQ(parse_attribute_string(attribute_string(names, {0, 1, 2})).size(), 3u);
  EXPECT_THROW(parse_attribute_string("quality=4"), Error);
  EXPECT_THROW(parse_attribute_string("quality:high"), Error);
  EXPECT_EQ(attribute_names(" quality, humor "), (std::vector<std::string>{"quality", "humor"}));
  EXPECT_THROW(attribute_names("quality,,humor"), Error);
  const auto top = record_attributes(nlohmann::json{{"quality", 3}}, names, "r");
  EXPECT_EQ(top, (std::vector<float>{3, kNoLabel, kNoLabel}));
  const auto nested = record_attributes(nlohmann::json{{"attributes", {{"humor", 2}, {"toxicity", -100}}}}, names, "r");
  EXPECT_EQ(nested, (std::vector<float>{kNoLabel, -100, 2}));
  EXPECT_THROW(record_attributes(nlohmann::json{{"quality", "good"}}, names, "r"), Error);
}

TEST(SteerLm, RegressionIgnoresMissingLabelsAndReadsTheLastRow) {
  // Two sequences of 3 rows, K = 2 values per row; targets on rows 0-1 of sequence 0 and row 0 of
  // sequence 1, so their last rows are 1 and 3.
  const int64_t B = 2, S = 3, K = 2;
  std::vector<float> value = {0.1f, 0.2f, 1.0f, 2.0f, 9.0f, 9.0f, 3.0f, 4.0f, 9.0f, 9.0f, 9.0f, 9.0f};
  const std::vector<int32_t> targets = {5, 6, -1, 7, -1, -1};
  HeadRows rows{value.data(), targets.data(), nullptr, B, S, nullptr};
  rows.width = K;
  const std::vector<std::vector<float>> labels = {{1.5f, kNoLabel, 2.0f, 5.0f}};
  const AttributeRegression loss(3.0, &labels);  // three labelled entries
  std::vector<float> dv(static_cast<size_t>(B * S * K));
  const ObjectiveValue v = loss.evaluate(rows, dv.data());
  // (1 - 1.5)^2 + (3 - 2)^2 + (4 - 5)^2, over 3
  EXPECT_NEAR(v.loss, (0.25 + 1.0 + 1.0) / 3.0, 1e-12);
  EXPECT_EQ(v.tokens, 3);
  const std::vector<float> want = {0, 0, 2 * (1.0f - 1.5f) / 3, 0, 0, 0, 2 * (3.0f - 2.0f) / 3, 2 * (4.0f - 5.0f) / 3,
                                   0, 0, 0, 0};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(dv[i], want[i], 1e-7) << i;
  value[3] = 100.0f;  // the unlabelled attribute's value changes nothing
  std::vector<float> dv2(dv.size());
  EXPECT_EQ(loss.evaluate(rows, dv2.data()).loss, v.loss);
  EXPECT_EQ(dv2, dv);
}

TEST(SteerLm, ConditionedSftWritesTheAttributesAfterTheAssistantHeaderUnlearned) {
  ByteTokenizer tok;
  const SftKeys keys;
  const SftExample e = render_sft_example(nlohmann::json{{"prompt", "Hi?"}, {"response", "Hello."}},
                                          ChatTemplate::nemo, keys, tok, "t", "quality:4,humor:0");
  std::vector<int32_t> learned, other;
  for (size_t i = 0; i < e.ids.size(); ++i) (e.learn[i] ? learned : other).push_back(e.ids[i]);
  EXPECT_EQ(tok.decode(learned), "Hello.\n");
  EXPECT_EQ(tok.decode(other), "<extra_id_0>System\n\n\n<extra_id_1>User\nHi?\n<extra_id_1>Assistant\n"
                               "<extra_id_2>quality:4,humor:0\n");
  EXPECT_EQ(chat_prompt("Hi?", ChatTemplate::nemo, "quality:4"),
            "<extra_id_0>System\n\n\n<extra_id_1>User\nHi?\n<extra_id_1>Assistant\n<extra_id_2>quality:4\n");
  EXPECT_THROW(chat_prompt("Hi?", ChatTemplate::chatml, "quality:4"), Error);
}

}  // namespace
}  // namespace ff
