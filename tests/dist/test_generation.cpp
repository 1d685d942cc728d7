// Greedy generation under TP, EP, TP + SP with folded EP, and PP (decode passing through the
// stages) gives the tokens of a single process decoding by full recomputation.
#include <gtest/gtest.h>

#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "train/generation.h"

namespace ff {
namespace {

ModelConfig model_config(bool moe) {
  ModelConfig c;
  c.vocab_size = 264;
  c.d_model = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 16;
  c.ffn_hidden = 40;
  c.num_experts = moe ? 4 : 0;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 24;
  c.init_std = 0.3;  // logits far apart: greedy choices are not near-ties
  return c;
}

void expect_layout_generates_like_one_process(bool moe, const ParallelConfig& pc) {
  Communicator world = Communicator::world();
  const auto problems = pc.validate(world.size());
  ASSERT_TRUE(problems.empty()) << problems[0];
  ParallelGrid grid(world, pc);
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  DecoderLM model(model_config(moe), grid, 21), ref(model_config(moe), one, 21);
  ByteTokenizer tok;
  const std::vector<std::vector<int32_t>> prompts = {tok.encode("And God said"), tok.encode("In"),
                                                     tok.encode("the beginning")};
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 30;  // past the 16-position cache
  const auto got = generate(model, grid, tok, prompts, o);
  o.kv_cache = false;
  const auto want = generate(ref, one, tok, prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i].tokens, want[i].tokens) << "prompt " << i;
}

TEST(Generation, TensorParallel) {
  ParallelConfig pc;
  pc.tp = 2;
  expect_layout_generates_like_one_process(false, pc);
}

TEST(Generation, ExpertParallel) {
  ParallelConfig pc;
  pc.ep = 2;
  expect_layout_generates_like_one_process(true, pc);
}

TEST(Generation, TensorAndSequenceParallelWithFoldedExperts) {
  ParallelConfig pc;
  pc.tp = 2;
  pc.sequence_parallel = true;
  pc.ep = 2;
  pc.etp = 1;
  expect_layout_generates_like_one_process(true, pc);
}

TEST(Generation, PipelineStages) {
  ParallelConfig pc;
  pc.pp = 2;
  expect_layout_generates_like_one_process(true, pc);
}

}  // namespace
}  // namespace ff
