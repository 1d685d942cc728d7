// The training loop end to end on a small synthetic corpus: it learns (validation loss falls
// well below the unigram baseline), it is deterministic, and it writes its metrics and model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/file_lock.h"
#include "train/trainer.h"

namespace ff {
namespace {

// Sentences from a tiny grammar: far from uniform bytes, so a model can learn them quickly.
std::string synthetic_corpus(size_t bytes) {
  const char* subjects[] = {"the king", "a shepherd", "the people", "my servant", "his son"};
  const char* verbs[] = {"went up to", "spake unto", "dwelt in", "came out of", "looked upon"};
  const char* objects[] = {"the city.", "the mountain.", "the house of the lord.", "the land.", "the sea."};
  Rng rng(3, "corpus");
  std::string s;
  while (s.size() < bytes) {
    s += subjects[rng.below(5)];
    s += " ";
    s += verbs[rng.below(5)];
    s += " ";
    s += objects[rng.below(5)];
    s += rng.below(4) == 0 ? "\n\n" : "\n";  // blank lines separate the documents
  }
  return s;
}

RunConfig small_run(const std::string& dir) {
  RunConfig c;
  c.model = model_preset("moe-tiny");
  c.model.vocab_size = ByteTokenizer::kVocabSize;
  c.model.d_model = 64;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 64;
  c.model.num_experts = 4;
  c.model.moe_ffn_hidden = 96;
  c.optim.lr = 3e-3;
  c.optim.warmup_steps = 10;
  c.train.steps = 80;
  c.train.micro_batch = 8;
  c.train.grad_accum = 2;
  c.train.eval_interval = 40;
  c.train.eval_samples = 32;
  c.train.out_dir = dir;
  c.train.peak_tflops = 1.0;  // skip the ceiling measurement
  c.train.data_path = dir + "/corpus.txt";  // preprocessed on first use into dir/corpus-byte-txt-HASH.{bin,idx}
  c.train.tokenizer_type = TokenizerType::byte;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(c.train.data_path) << synthetic_corpus(200000);
  return c;
}

TEST(Trainer, LearnsWellBelowTheUnigramBaselineAndWritesMetrics) {
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_trainer_learns").string();
  RunConfig c = small_run(dir);
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  Trainer t(c, grid);
  TrainResult r = t.run(/*quiet=*/true);
  EXPECT_LT(r.final_valid_loss, 0.7 * r.unigram_entropy) << "valid " << r.final_valid_loss << " unigram " << r.unigram_entropy;
  EXPECT_LT(r.final_valid_loss, r.first_valid_loss - 1.0);
  // One JSON record per step, with the fields the issue asks for.
  std::ifstream f(dir + "/metrics.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    for (const char* k : {"loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "max_expert_load",
                          "mean_expert_load", "dropped_fraction", "forward_s", "backward_s", "optimizer_s"})
      EXPECT_TRUE(j.contains(k)) << k;
    ++n;
  }
  EXPECT_EQ(n, c.train.steps);
  // The saved model reloads with its config and gives the same validation loss.
  RunConfig saved = load_model_config(dir + "/model.safetensors");
  EXPECT_EQ(saved.model.d_model, 64);
  DecoderLM reloaded(saved.model, grid, 999);
  load_model_weights(reloaded, dir + "/model.safetensors");
  EXPECT_EQ(0, std::memcmp(reloaded.params().values(), t.model().params().values(),
                           sizeof(float) * static_cast<size_t>(t.model().params().numel())));
  std::filesystem::remove_all(dir);
}

TEST(Trainer, SameSeedSameConfigGivesBitIdenticalLosses) {
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_trainer_det").string();
  RunConfig c = small_run(dir);
  c.train.steps = 6;
  c.model.moe_capacity_factor = 1.0;  // exercise dropping too
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  std::vector<double> losses[2];
  for (int run = 0; run < 2; ++run) {
    Trainer t(c, grid);
    losses[run] = t.run(true).losses;
  }
  ASSERT_EQ(losses[0].size(), 6u);
  for (size_t i = 0; i < losses[0].size(); ++i) EXPECT_EQ(losses[0][i], losses[1][i]) << "step " << i;
  std::filesystem::remove_all(dir);
}

// The validation set is train.eval_samples samples whatever the micro-batch (issue: 5.5920 with
// --micro_batch 4 against 5.5859 with 2). Only the grouping of rows into GEMMs differs, so the
// losses agree to fp32 rounding of the logits (relative 1e-5 covers a few ulp over the model's
// sums of d_model = 64 and 2 layers, with the per-batch sums taken in double).
TEST(Trainer, ValidationLossDoesNotDependOnTheMicroBatch) {
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_trainer_valid").string();
  double loss[3] = {};
  const int64_t micro[3] = {2, 4, 7};  // 7 does not divide the 20 samples: the last batch is partly masked
  for (int k = 0; k < 3; ++k) {
    RunConfig c = small_run(dir);
    c.train.steps = 0;
    c.train.micro_batch = micro[k];
    c.train.eval_samples = 20;
    Communicator world = Communicator::world();
    ParallelGrid grid(world, c.parallel);
    Trainer t(c, grid);
    loss[k] = t.run(true).first_valid_loss;
  }
  EXPECT_GT(loss[0], 1.0);
  EXPECT_NEAR(loss[1], loss[0], 1e-5 * loss[0]);
  EXPECT_NEAR(loss[2], loss[0], 1e-5 * loss[0]);
  std::filesystem::remove_all(dir);
}

// One run at a time in an out_dir: a second one is refused, naming the process that holds it, and
// leaves the first one's files alone; once the holder is gone (as if it ended or was killed) the
// same folder takes a run again.
TEST(Trainer, AnOutDirInUseIsRefusedNamingItsHolder) {
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_trainer_locked").string();
  RunConfig c = small_run(dir);
  c.train.steps = 1;
  c.train.eval_samples = 8;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  {
    FileLock other(dir + "/.fivefold.lock", "out_dir " + dir);  // the other run
    std::ofstream(dir + "/metrics.jsonl") << "{\"step\": 1}\n";
    Trainer t(c, grid);
    try {
      t.run(true);
      ADD_FAILURE() << "trained into an out_dir in use";
    } catch (const UserError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("in use by another fivefold process (pid " + std::to_string(::getpid())), std::string::npos)
          << msg;
      EXPECT_NE(msg.find(dir), std::string::npos) << msg;
    }
    EXPECT_TRUE(std::filesystem::exists(dir + "/metrics.jsonl"));  // not moved aside, not replaced
    EXPECT_FALSE(std::filesystem::exists(dir + "/previous-1"));
  }
  Trainer t(c, grid);
  EXPECT_EQ(t.run(true).losses.size(), 1u);
  std::filesystem::remove_all(dir);
}

// train.freeze: the frozen tensors leave training as they entered it; a glob that matches nothing
// is an error that names the field.
TEST(Trainer, FreezeKeepsFrozenTensorsAndRejectsGlobsThatMatchNothing) {
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_trainer_freeze").string();
  RunConfig c = small_run(dir);
  c.train.steps = 4;
  c.train.freeze = "model.embed_tokens.*, model.layers.0.*";
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  Trainer t(c, grid);
  std::vector<float> before(t.model().params().values(), t.model().params().values() + t.model().params().numel());
  t.run(true);
  int frozen = 0;
  for (const Param& p : t.model().params().params()) {
    const bool same = std::memcmp(before.data() + p.offset, p.value, sizeof(float) * static_cast<size_t>(p.numel())) == 0;
    EXPECT_EQ(same, !p.trainable) << p.name;
    const bool want_frozen = p.name == "model.embed_tokens.weight" || p.name.rfind("model.layers.0.", 0) == 0;
    EXPECT_EQ(p.trainable, !want_frozen) << p.name;
    frozen += !p.trainable;
  }
  EXPECT_GT(frozen, 6);  // the embedding; block 0's norms, attention, router and experts
  c.train.freeze = "model.embed_tokns.*";
  try {
    Trainer typo(c, grid);
    ADD_FAILURE() << "a glob that matches nothing was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.freeze: 'model.embed_tokns.*' matches no parameter"), std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}

// train.teacher: a second model in the job, frozen, loaded from a model file; the student's
// distillation loss falls; a teacher of another vocabulary is refused.
TEST(Trainer, DistilsFromATeacherModelFile) {
  const std::string dir = (std::filesystem::temp_directory_path() / "fivefold_trainer_distil").string();
  RunConfig t = small_run(dir);
  t.train.steps = 20;
  t.train.out_dir = dir + "/teacher";
  Communicator world = Communicator::world();
  ParallelGrid grid(world, t.parallel);
  Trainer(t, grid).run(true);
  RunConfig s = t;
  s.train.out_dir = dir + "/student";
  s.train.teacher = dir + "/teacher/model.safetensors";
  s.train.kd_temperature = 2.0;
  s.train.steps = 15;
  s.model.d_model = 32;  // a smaller student
  s.model.num_heads = 4;
  s.model.moe_ffn_hidden = 48;
  const TrainResult r = Trainer(s, grid).run(true);
  ASSERT_EQ(r.losses.size(), 15u);
  EXPECT_LT(r.losses.back(), 0.7 * r.losses.front()) << r.losses.front() << " -> " << r.losses.back();
  s.model.vocab_size = 300;
  try {
    Trainer bad(s, grid);
    ADD_FAILURE() << "a teacher of another vocabulary was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("same vocabulary"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ff
