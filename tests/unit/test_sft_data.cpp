// SFT data: templates render examples with the loss on the assistant's tokens only; samples carry
// the next token as target exactly where it is learned; bad records get errors naming the line.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "train/config.h"
#include "train/objective.h"
#include "train/sft_data.h"
#include "train/trainer.h"
#include "test_util.h"

namespace ff {
namespace {

// The text of the learned tokens and of the others, in order.
std::pair<std::string, std::string> split_text(const SftExample& e, const Tokenizer& tok) {
  std::vector<int32_t> learned, other;
  for (size_t i = 0; i < e.ids.size(); ++i) (e.learn[i] ? learned : other).push_back(e.ids[i]);
  return {tok.decode(learned), tok.decode(other)};
}

TEST(SftData, TemplatesLearnTheAssistantTurnsOnly) {
  ByteTokenizer tok;
  const auto record = nlohmann::json::parse(
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},)"
      R"( {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"},)"
      R"( {"role": "assistant", "content": "Farewell."}]})");
  SftKeys keys;
  SftExample chatml = render_sft_example(record, ChatTemplate::chatml, keys, tok, "t");
  auto [learned, other] = split_text(chatml, tok);
  EXPECT_EQ(learned, "Hello.<|im_end|>Farewell.<|im_end|>");  // + EOD, which decodes to nothing
  EXPECT_EQ(other, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
                   "\n<|im_start|>user\nBye?<|im_end|>\n<|im_start|>assistant\n\n");
  EXPECT_EQ(chatml.ids.back(), tok.eod());
  EXPECT_EQ(chatml.learn.back(), 1);
  SftExample nemo = render_sft_example(record, ChatTemplate::nemo, keys, tok, "t");
  std::tie(learned, other) = split_text(nemo, tok);
  EXPECT_EQ(learned, "Hello.\nFarewell.\n");
  EXPECT_EQ(other, "<extra_id_0>System\nBe brief.\n\n<extra_id_1>User\nHi?\n<extra_id_1>Assistant\n"
                   "<extra_id_1>User\nBye?\n<extra_id_1>Assistant\n");
  SftExample llama3 = render_sft_example(record, ChatTemplate::llama3, keys, tok, "t");
  std::tie(learned, other) = split_text(llama3, tok);
  EXPECT_EQ(learned, "Hello.<|eot_id|>Farewell.<|eot_id|>");
  const auto plain = render_sft_example(nlohmann::json::parse(R"({"prompt": "2+2=", "response": "4"})"),
                                        ChatTemplate::none, keys, tok, "t");
  std::tie(learned, other) = split_text(plain, tok);
  EXPECT_EQ(learned, "4");
  EXPECT_EQ(other, "2+2=");
  EXPECT_EQ(chat_prompt("Hi?", ChatTemplate::chatml), "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(chat_prompt("Hi?", ChatTemplate::nemo), "<extra_id_0>System\n\n\n<extra_id_1>User\nHi?\n<extra_id_1>Assistant\n");
}

TEST(SftData, SamplesTargetTheLearnedTokensAndPadWithoutLoss) {
  ByteTokenizer tok;
  SftKeys keys;
  const auto e = render_sft_example(nlohmann::json::parse(R"({"prompt": "ab", "response": "cd"})"), ChatTemplate::none,
                                    keys, tok, "t");
  ASSERT_EQ(e.ids.size(), 5u);  // a b c d EOD
  SftSamples s({e}, 0, 1);
  std::vector<int32_t> tokens, targets, positions;
  s.fill(tokens, targets, positions, 0, 1, 6);
  EXPECT_TRUE(positions.empty());
  EXPECT_EQ(tokens, (std::vector<int32_t>{'a', 'b', 'c', 'd', 0, 0}));
  // Position j predicts token j + 1: learned for c, d and EOD.
  EXPECT_EQ(targets, (std::vector<int32_t>{-1, 'c', 'd', tok.eod(), -1, -1}));
  s.fill(tokens, targets, positions, 0, 1, 2);  // cut at S = 2
  EXPECT_EQ(targets, (std::vector<int32_t>{-1, 'c'}));
}

TEST(SftData, BadRecordsNameTheirLine) {
  const std::string dir = test::fresh_dir("sft_bad");
  RunConfig c;
  c.model.vocab_size = 264;
  c.train.data_format = DataFormat::sft;
  c.train.tokenizer_type = TokenizerType::byte;
  c.train.data_path = dir + "/sft.jsonl";
  auto expect_error = [&](const std::string& text, const std::string& what) {
    std::ofstream(c.train.data_path) << text;
    TrainingData d;
    d.tokenizer = std::make_unique<ByteTokenizer>();
    std::string summary;
    try {
      open_sft_data(c, d, summary);
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error("{\"prompt\": \"a\", \"response\": \"b\"}\n{\"question\": \"a\"}\n", "sft.jsonl line 2: the example has neither");
  expect_error("{\"prompt\": \"a\", \"response\": 3}\n", "line 1: field \"response\" is missing or not a string");
  expect_error("{\"prompt\": \"a\"\n", "line 1: not valid JSON");
  expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n", "needs a chat template");
  c.train.chat_template = ChatTemplate::chatml;
  expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n", "no assistant turn");
  expect_error("{\"messages\": [{\"role\": \"bot\", \"content\": \"a\"}]}\n", "role \"bot\"");
  // Prompts that fill seq_len leave nothing to learn: an error, not a run whose loss is 0.
  c.model.seq_len = 8;
  expect_error("{\"prompt\": \"a prompt longer than the sequence\", \"response\": \"b\"}\n", "no example has a token to learn");
  c.model.seq_len = RunConfig{}.model.seq_len;
  std::filesystem::remove_all(dir);
  // An unknown template name is refused by the config, naming the field.
  try {
    run_config_from_json(R"({"train": {"chat_template": "vicuna"}})", "cfg.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.chat_template"), std::string::npos) << e.what();
  }
}

// Three examples packed into one sequence (positions restarting, attention confined to each)
// give the loss and gradients of the same examples as three padded sequences.
TEST(SftData, PackedExamplesEqualTheExamplesOneByOne) {
  ByteTokenizer tok;
  SftKeys keys;
  std::vector<SftExample> ex;
  for (const char* r : {R"({"prompt": "ab", "response": "cd"})", R"({"prompt": "efg", "response": "hij"})",
                        R"({"prompt": "k", "response": "lmn"})"})
    ex.push_back(render_sft_example(nlohmann::json::parse(r), ChatTemplate::none, keys, tok, "t"));
  const int64_t S = 20;  // 5 + 7 + 5 tokens, then 3 of padding
  SftSamples packed(ex, 0, 3, S), single(ex, 0, 3);
  ASSERT_EQ(packed.size(), 1);
  ASSERT_EQ(single.size(), 3);
  std::vector<int32_t> pt, py, pp, st, sy, sp;
  packed.fill(pt, py, pp, 0, 1, S);
  single.fill(st, sy, sp, 0, 3, S);
  std::vector<int> lengths;  // the segments: positions restart at 0 for each example, then the padding
  for (size_t i = 0; i < pp.size(); ++i) {
    if (pp[i] == 0) lengths.push_back(0);
    EXPECT_EQ(pp[i], lengths.back()) << i;
    ++lengths.back();
  }
  EXPECT_EQ(lengths.back(), 3);
  std::sort(lengths.begin(), lengths.end());
  EXPECT_EQ(lengths, (std::vector<int>{3, 5, 5, 7}));
  ModelConfig c;
  c.vocab_size = 264;
  c.d_model = 16;
  c.layer_pattern = "*-*E";
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = S;
  c.ffn_hidden = 20;
  c.num_experts = 4;
  c.moe_ffn_hidden = 12;
  c.moe_aux_loss_coeff = 0;  // defined per micro-batch, so it differs by design
  c.init_std = 0.3;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM a(c, grid, 8), b(c, grid, 8);
  auto ma = a.new_micro_batch(), mb = b.new_micro_batch();
  a.params().zero_grads();
  b.params().zero_grads();
  ForwardResult ra = a.forward(*ma, pt.data(), py.data(), 1, S, pp.data());
  (void)ra;
  const HeadRows in = a.head_rows(*ma);
  std::vector<float> dlogp(static_cast<size_t>(S));
  const ObjectiveValue va = TokenMeanCrossEntropy(static_cast<double>(count_targets(py))).evaluate(in, dlogp.data());
  a.backward(*ma, dlogp.data(), 1.0f, 1.0f);
  const double want = forward_mean_ce(b, *mb, st.data(), sy.data(), 3, S).loss;
  backward_mean_ce(b, *mb, 1.0f);
  EXPECT_EQ(va.tokens, count_targets(sy));
  EXPECT_NEAR(va.loss, want, 1e-6 * want);
  for (size_t i = 0; i < a.params().params().size(); ++i) {
    const Param &p = a.params().params()[i], &q = b.params().params()[i];
    EXPECT_TRUE(test::all_close(p.grad, q.grad, static_cast<size_t>(p.numel()), 1e-6, 1e-4)) << p.name;
  }
}

}  // namespace
}  // namespace ff
