// Models named by a path (train/model_source.h): a model file carries its tokenizer; weights load
// from a model file, a checkpoint and a Hugging Face folder alike; what does not fit is an error
// that names the tensor; a model is never paired with a tokenizer silently.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/base64.h"
#include "io/checkpoint.h"
#include "models/hf_convert.h"
#include "train/model_source.h"
#include "train/trainer.h"
#include "test_util.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

TEST(Base64, RoundTripsEveryLengthAndRejectsBadText) {
  Rng rng(2, "base64");
  for (size_t n = 0; n < 40; ++n) {
    std::string bytes;
    for (size_t i = 0; i < n; ++i) bytes += static_cast<char>(rng.below(256));
    const std::string text = base64_encode(bytes);
    EXPECT_EQ(text.size(), (n + 2) / 3 * 4);
    std::string back;
    ASSERT_TRUE(base64_decode(text, back)) << n;
    EXPECT_EQ(back, bytes) << n;
  }
  EXPECT_EQ(base64_encode("Man"), "TWFu");
  EXPECT_EQ(base64_encode("Ma"), "TWE=");
  std::string out;
  EXPECT_FALSE(base64_decode("TWF", out));   // length
  EXPECT_FALSE(base64_decode("TW!u", out));  // alphabet
  EXPECT_FALSE(base64_decode("T=Fu", out));  // padding inside
}

ModelConfig tiny(int64_t vocab) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.d_model = 16;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 8;
  c.ffn_hidden = 24;
  c.num_experts = 0;
  c.init_std = 0.2;
  return c;
}

class ModelSourceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {  // one small SentencePiece model for the suite
    spm_dir_ = test::fresh_dir("model_source_spm");
    const char* words[] = {"the", "lord", "said", "unto", "moses", "and", "aaron", "behold", "israel", "land",
                           "egypt", "people", "go", "children", "shall", "know", "spoken", "city", "house", "sea"};
    Rng rng(4, "corpus");
    std::ofstream corpus(spm_dir_ + "/corpus.txt");
    for (int line = 0; line < 3000; ++line) {
      for (int w = 0; w < 9; ++w) corpus << words[rng.below(20)] << (w < 8 ? " " : "\n");
    }
    corpus.close();
    SentencePieceTrainConfig t;
    t.input = spm_dir_ + "/corpus.txt";
    t.model_prefix = spm_dir_ + "/sp";
    t.vocab_size = 320;
    train_sentencepiece(t);
  }
  static void TearDownTestSuite() { fs::remove_all(spm_dir_); }
  void SetUp() override {
    dir_ = test::fresh_dir("model_source");
    fs::copy_file(spm_dir_ + "/sp.model", dir_ + "/sp.model");
    cfg_.model = tiny(320);
    cfg_.train.model_preset = "";
    cfg_.train.tokenizer_type = TokenizerType::sentencepiece;
    cfg_.train.tokenizer_path = dir_ + "/sp.model";
  }
  void TearDown() override { fs::remove_all(dir_); }
  static std::string spm_dir_;
  std::string dir_;
  RunConfig cfg_;
};
std::string ModelSourceTest::spm_dir_;

TEST_F(ModelSourceTest, AModelFileCarriesItsTokenizer) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(cfg_.model, grid, 3);
  const TokenizerFile tok = run_tokenizer_file(cfg_);
  const auto before = make_tokenizer(tok)->encode("the lord said unto moses");
  save_model(model, cfg_, dir_ + "/with.safetensors", &tok);
  save_model(model, cfg_, dir_ + "/without.safetensors");
  fs::rename(dir_ + "/sp.model", dir_ + "/elsewhere.model");  // the training folder's file is gone
  const ModelSource with = open_model_source(dir_ + "/with.safetensors");
  ASSERT_TRUE(with.tokenizer.has_value());
  EXPECT_EQ(with.tokenizer->bytes, tok.bytes);
  EXPECT_EQ(make_tokenizer(model_tokenizer(with, std::nullopt))->encode("the lord said unto moses"), before);
  // An explicit tokenizer wins over the carried one.
  EXPECT_EQ(model_tokenizer(with, TokenizerFile{}).type, TokenizerType::byte);
  // A model without one, whose training tokenizer is not here: an error, not another tokenizer.
  const ModelSource without = open_model_source(dir_ + "/without.safetensors");
  EXPECT_FALSE(without.tokenizer.has_value());
  try {
    model_tokenizer(without, std::nullopt);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("carries no tokenizer"), std::string::npos) << e.what();
  }
}

// The same weights from a model file, a checkpoint and a Hugging Face folder.
TEST_F(ModelSourceTest, WeightsLoadFromEveryKindOfSource) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(cfg_.model, grid, 3);
  const TokenizerFile tok = run_tokenizer_file(cfg_);
  save_model(model, cfg_, dir_ + "/m.safetensors", &tok);
  CheckpointContents contents;
  contents.params = &model.params();
  TrainingState state;
  state.config_json = run_config_to_json(cfg_);
  save_checkpoint(dir_ + "/ckpt", contents, state, world, 0);
  TensorMap tensors;
  for (const Param& p : model.params().params())
    tensors[p.name] = {p.global_shape.vec(), std::vector<float>(p.value, p.value + p.numel())};
  export_hf(cfg_.model, tensors, dir_ + "/hf", HfExportOptions{});
  fs::copy_file(dir_ + "/sp.model", dir_ + "/hf/tokenizer.model");
  for (const std::string& path : {dir_ + "/m.safetensors", dir_ + "/ckpt", dir_ + "/hf"}) {
    const ModelSource src = open_model_source(path);
    EXPECT_EQ(src.config.model.d_model, 16) << path;
    DecoderLM other(src.config.model, grid, 99);  // another seed: other initial values
    const LoadReport r = load_model_source(src, other);
    EXPECT_EQ(r.loaded, static_cast<int64_t>(model.params().params().size())) << path;
    EXPECT_TRUE(r.fresh.empty() && r.unused.empty()) << path;
    for (size_t i = 0; i < model.params().params().size(); ++i) {
      const Param &a = model.params().params()[i], &b = other.params().params()[i];
      EXPECT_EQ(0, std::memcmp(a.value, b.value, sizeof(float) * static_cast<size_t>(a.numel()))) << path << " " << a.name;
    }
    if (path == dir_ + "/hf") {
      ASSERT_TRUE(src.tokenizer.has_value());
      EXPECT_EQ(src.tokenizer->bytes, tok.bytes);
    }
  }
  // A Hugging Face folder without a tokenizer names none: no default file stands in for it.
  fs::remove(dir_ + "/hf/tokenizer.model");
  const ModelSource bare = open_model_source(dir_ + "/hf");
  EXPECT_FALSE(bare.tokenizer.has_value());
  EXPECT_EQ(bare.config.train.tokenizer_path, "");
  EXPECT_THROW(model_tokenizer(bare, std::nullopt), Error);
}

TEST_F(ModelSourceTest, WhatDoesNotFitIsAnErrorNamingTheTensor) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM model(cfg_.model, grid, 3);
  save_model(model, cfg_, dir_ + "/m.safetensors");
  const ModelSource src = open_model_source(dir_ + "/m.safetensors");
  auto expect_error = [](const std::function<void()>& f, const std::string& what) {
    try {
      f();
      ADD_FAILURE() << "no error; wanted " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  ModelConfig wider = cfg_.model;
  wider.ffn_hidden = 32;
  DecoderLM w(wider, grid, 3);
  expect_error([&] { load_model_source(src, w); }, "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [24, 16]");
  ModelConfig tied = cfg_.model;  // lacks lm_head.weight: the source's is unused
  tied.tie_embeddings = true;
  DecoderLM t(tied, grid, 3);
  const LoadReport r = load_model_source(src, t);
  ASSERT_EQ(r.unused.size(), 1u);
  EXPECT_EQ(r.unused[0], "lm_head.weight");
  ModelConfig deeper = cfg_.model;
  deeper.num_layers = 3;
  DecoderLM d(deeper, grid, 3);
  expect_error([&] { load_model_source(src, d); }, "has no tensor 'model.layers.2.input_layernorm.weight'");
  const LoadReport fresh = load_model_source(src, d, {"model.layers.2.*"});
  EXPECT_EQ(fresh.fresh.size(), 9u);  // the new block: two norms, q, k, v, o, gate, up, down
  std::ofstream(dir_ + "/notes.txt") << "not a model";
  expect_error([&] { open_model_source(dir_ + "/notes.txt"); }, "is not a model");
  expect_error([&] { open_model_source(dir_ + "/missing"); }, "no such file or folder");
}

}  // namespace
}  // namespace ff
