// Preference pairs and their objectives (specs/methods.md §6.2-6.3, tests of §6.9): the pair
// losses' values, minima and derivatives; DPO through a model (log 2 when the policy is the
// reference, its gradient raising the chosen response's log-prob); the data layout and its bad
// input; and training: a reward model and DPO learn a toy preference, a LoRA policy's reference is
// its own base, and a run stopped mid-DPO resumes bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/tokenizer.h"
#include "models/decoder_lm.h"
#include "train/preference_data.h"
#include "train/preference_objective.h"
#include "train/trainer.h"
#include "test_util.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

PairwiseOptions options(Objective kind, double beta = 0.2) {
  PairwiseOptions o;
  o.kind = kind;
  o.beta = beta;
  o.eta = 0.5;
  return o;
}

TEST(PairLoss, ValuesMinimaAndDerivatives) {
  const double log2 = std::log(2.0);
  EXPECT_NEAR(pair_loss(options(Objective::dpo), 0, 0).loss, log2, 1e-15);           // policy = reference
  EXPECT_LT(pair_loss(options(Objective::dpo), 0, 0).dloss, 0);                      // raising delta lowers it
  EXPECT_NEAR(pair_loss(options(Objective::bradley_terry), 0, 0).loss, log2, 1e-15);  // equal rewards
  const double beta = 0.4;
  const PairLoss at_min = pair_loss(options(Objective::ipo, beta), 1 / (2 * beta), 0);
  EXPECT_NEAR(at_min.loss, 0, 1e-15);  // IPO's minimum at delta = 1 / (2 beta)
  EXPECT_NEAR(at_min.dloss, 0, 1e-15);
  EXPECT_GT(pair_loss(options(Objective::ipo, beta), 1 / (2 * beta) + 0.1, 0).loss, 0);
  // RPO's minimum: beta delta = eta dr (the squared and both KL forms).
  for (Objective k : {Objective::rpo_sq, Objective::rpo_fwd_kl, Objective::rpo_bwd_kl}) {
    const PairLoss l = pair_loss(options(k, beta), 0.5 * 3.0 / beta, 3.0);
    EXPECT_NEAR(l.loss, 0, 1e-12) << enum_to_string(k);
    EXPECT_NEAR(l.dloss, 0, 1e-12) << enum_to_string(k);
  }
  // Every derivative against a central difference in double (h = 1e-5: error ~ h^2 |L'''|, far
  // below the 1e-7 allowed; these losses are smooth with derivatives of order 1).
  for (Objective k : {Objective::bradley_terry, Objective::dpo, Objective::ipo, Objective::rpo_sq,
                      Objective::rpo_fwd_kl, Objective::rpo_bwd_kl})
    for (double d : {-3.0, -0.4, 0.0, 0.7, 5.0}) {
      const PairwiseOptions o = options(k, 0.3);
      const double h = 1e-5;
      const double fd = (pair_loss(o, d + h, 1.5).loss - pair_loss(o, d - h, 1.5).loss) / (2 * h);
      EXPECT_NEAR(pair_loss(o, d, 1.5).dloss, fd, 1e-7) << enum_to_string(k) << " at " << d;
    }
}

ModelConfig lm() { return test::small_model("*-", 29); }

// Two pairs of random sequences of S, each sequence's first two rows its prompt.
void pairs_batch(const ModelConfig& c, std::vector<int32_t>& tokens, std::vector<int32_t>& targets) {
  Rng rng(3, "pairs");
  tokens.clear();
  targets.clear();
  for (int64_t i = 0; i < 4 * c.seq_len; ++i) {
    tokens.push_back(static_cast<int32_t>(rng.below(29)));
    targets.push_back(i % c.seq_len < 2 ? -1 : static_cast<int32_t>(rng.below(29)));
  }
}

TEST(PairwiseObjective, DpoIsLog2AtTheReferenceAndItsGradientRaisesTheChosen) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  const ModelConfig c = lm();
  const int64_t B = 4, S = c.seq_len;
  DecoderLM policy(c, grid, 5);
  std::vector<int32_t> tokens, targets;
  pairs_batch(c, tokens, targets);
  auto mb = policy.new_micro_batch();
  policy.forward(*mb, tokens.data(), targets.data(), B, S);
  std::vector<std::vector<double>> reference{sequence_logps(policy.head_rows(*mb), false)};  // policy = reference
  const PairwiseObjective dpo(options(Objective::dpo), 2, &reference, nullptr);
  std::vector<float> dlogp(static_cast<size_t>(B * S));
  EXPECT_NEAR(dpo.evaluate(policy.head_rows(*mb), dlogp.data()).loss, std::log(2.0), 1e-12);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 2; s < S; ++s) {  // chosen rows pushed up, rejected down: -beta sigma(0) / pairs
      const float g = dlogp[static_cast<size_t>(b * S + s)];
      EXPECT_FLOAT_EQ(g, (b % 2 == 0 ? 1.0f : -1.0f) * -0.2f * 0.5f / 2.0f);
    }
  // A small step against the gradient raises the chosen responses' log-probs over the rejected.
  policy.params().zero_grads();
  policy.backward(*mb, HeadGradient(dlogp.data()), 1.0f, 1.0f);
  for (Param& p : policy.params().params())
    for (int64_t i = 0; i < p.numel(); ++i) p.value[i] -= 0.05f * p.grad[i];
  policy.mark_values_changed();
  policy.forward(*mb, tokens.data(), targets.data(), B, S);
  const auto after = sequence_logps(policy.head_rows(*mb), false);
  for (int64_t i = 0; i < 2; ++i)
    EXPECT_GT(after[2 * i] - after[2 * i + 1], reference[0][2 * i] - reference[0][2 * i + 1]) << "pair " << i;
}

// A preference file of `n` pairs: prompt "Q<i>:", chosen " yes", rejected " no".
std::string write_pairs(const std::string& dir, int n, const std::string& extra_line = "") {
  const std::string path = dir + "/pairs.jsonl";
  std::ofstream f(path);
  for (int i = 0; i < n; ++i)
    f << nlohmann::json{{"prompt", "Q" + std::to_string(i % 7) + ":"}, {"chosen", " yes"}, {"rejected", " no"},
                        {"chosen_reward", 4}, {"rejected_reward", 1}}.dump() << "\n";
  f << extra_line;
  return path;
}

RunConfig preference_run(const std::string& dir, Objective kind) {
  RunConfig c;
  c.model = test::small_model("*-*-", ByteTokenizer::kVocabSize);
  c.model.seq_len = 12;
  c.model.d_model = 32;
  c.model.init_std = 0.02;
  c.optim.lr = 3e-3;
  c.optim.warmup_steps = 0;
  c.train.objective = kind;
  c.train.data_format = DataFormat::preference;
  c.train.tokenizer_type = TokenizerType::byte;
  c.train.data_path = write_pairs(dir, 60);
  c.train.split = "80,20,0";
  c.train.micro_batch = 4;
  c.train.steps = 30;
  c.train.eval_interval = 0;
  c.train.eval_samples = 24;
  c.train.peak_tflops = 1;
  c.train.out_dir = dir + "/run";
  if (kind == Objective::bradley_terry) c.model.head = HeadKind::value;
  return c;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(PreferenceData, PairsSitSideBySideAndBadInputIsNamed) {
  const std::string dir = test::fresh_dir("pref_data");
  RunConfig c = preference_run(dir, Objective::dpo);
  // One pair whose prompt fills seq_len: left out and counted.
  c.train.data_path = write_pairs(dir, 10, nlohmann::json{{"prompt", std::string(40, 'x')}, {"chosen", "a"},
                                                           {"rejected", "b"}}.dump() + "\n");
  TrainingData d;
  d.tokenizer = std::make_unique<ByteTokenizer>();
  std::string summary;
  open_preference_data(c, d, summary);
  EXPECT_NE(summary.find("10 pairs"), std::string::npos) << summary;
  EXPECT_NE(summary.find("1 left out: prompt fills model.seq_len = 12"), std::string::npos) << summary;
  std::vector<int32_t> tokens, targets, positions;
  d.train->fill(tokens, targets, positions, 2, 4, c.model.seq_len);
  const ByteTokenizer tok;
  for (int64_t b = 0; b < 4; ++b) {  // chosen, rejected, chosen, rejected; targets on the response only
    std::vector<int32_t> learned;
    for (int64_t s = 0; s < c.model.seq_len; ++s)
      if (targets[static_cast<size_t>(b * c.model.seq_len + s)] >= 0)
        learned.push_back(targets[static_cast<size_t>(b * c.model.seq_len + s)]);
    EXPECT_EQ(tok.decode(learned), b % 2 == 0 ? " yes" : " no") << b;
  }
  EXPECT_TRUE(d.train->sequence_labels(0, 4).empty());  // DPO reads no rewards
  auto fails_with = [&](const std::string& line, const std::string& needle, Objective kind = Objective::dpo) {
    RunConfig bad = c;
    bad.train.objective = kind;
    bad.train.data_path = write_pairs(dir, 3, line + "\n");
    TrainingData e;
    e.tokenizer = std::make_unique<ByteTokenizer>();
    const std::string msg = error_of([&] { open_preference_data(bad, e, summary); });
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find("line 4"), std::string::npos) << msg;
  };
  fails_with(R"({"prompt": "Q", "chosen": "", "rejected": "b"})", "\"chosen\" is empty");
  fails_with(R"({"prompt": "Q", "chosen": "a"})", "\"rejected\" is missing");
  fails_with(R"({"prompt": "Q", "chosen": "a", "rejected": "b"})", "\"chosen_reward\" is missing", Objective::rpo_sq);
  fails_with("{not json", "not valid JSON");
}

TEST(PreferenceTraining, ARewardModelLearnsTheToyPreference) {
  const std::string dir = test::fresh_dir("pref_rm");
  RunConfig c = preference_run(dir, Objective::bradley_terry);
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  Trainer t(c, grid);
  const TrainResult r = t.run(true);
  EXPECT_LT(r.final_valid_loss, 0.2);
  EXPECT_GT(r.final_valid_accuracy, 0.99);
}

TEST(PreferenceTraining, DpoFromItsOwnStartLearnsAndAReferenceOfAnotherVocabularyIsRefused) {
  const std::string dir = test::fresh_dir("pref_dpo");
  RunConfig c = preference_run(dir, Objective::dpo);
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  {  // the starting model, as a model file
    DecoderLM start(c.model, grid, 9);
    save_model(start, c, dir + "/start.safetensors");
  }
  c.train.init_from = dir + "/start.safetensors";
  Trainer t(c, grid);
  const TrainResult r = t.run(true);
  EXPECT_NEAR(r.first_valid_loss, std::log(2.0), 1e-6);  // the policy starts as the reference
  EXPECT_LT(r.final_valid_loss, 0.3);
  EXPECT_GT(r.final_valid_accuracy, 0.99);
  // A reference over another vocabulary: one clear error.
  RunConfig other = c;
  other.model.vocab_size = 300;
  {
    DecoderLM m(other.model, grid, 9);
    save_model(m, other, dir + "/other.safetensors");
  }
  c.train.reference = dir + "/other.safetensors";
  const std::string msg = error_of([&] { Trainer bad(c, grid); });
  EXPECT_NE(msg.find("model.vocab_size = 300"), std::string::npos) << msg;
  EXPECT_NE(msg.find("same vocabulary"), std::string::npos) << msg;
}

// Under LoRA the reference is the policy's own base (adapters off): no second model, and the
// policy starts equal to it (B = 0), so the first validation loss is log 2.
TEST(PreferenceTraining, UnderLoraTheReferenceIsTheBaseWithAdaptersOff) {
  const std::string dir = test::fresh_dir("pref_lora");
  RunConfig c = preference_run(dir, Objective::dpo);
  c.model.lora_rank = 4;
  c.model.lora_alpha = 8;
  c.model.lora_targets = "q_proj,v_proj,up_proj,down_proj";
  c.optim.lr = 1e-2;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  Trainer t(c, grid);
  const TrainResult r = t.run(true);
  EXPECT_NEAR(r.first_valid_loss, std::log(2.0), 1e-6);
  EXPECT_LT(r.final_valid_loss, r.first_valid_loss - 0.2);
  // Memory: the reference adds nothing here, and a full model's worth of weights without LoRA.
  ModelRole policy("model", c.model, c.optim, grid, 1);
  PipelineExecutor pipe(policy.model(), grid, 1);
  EXPECT_EQ(PreferenceTraining(c, policy, pipe, grid).reference_bytes(), 0);
  RunConfig full = preference_run(dir, Objective::dpo);
  {
    DecoderLM start(full.model, grid, 9);
    save_model(start, full, dir + "/start.safetensors");
    full.train.init_from = dir + "/start.safetensors";
    ModelRole p2("model", full.model, full.optim, grid, 1);
    PipelineExecutor pipe2(p2.model(), grid, 1);
    EXPECT_EQ(PreferenceTraining(full, p2, pipe2, grid).reference_bytes(),
              static_cast<int64_t>(sizeof(float)) * start.params().numel());
  }
}

// Resumed from the checkpoint after 2 of 4 steps: the same losses and weights as 4 uninterrupted
// steps (bit for bit: fp32 on one process, the reference reloaded from its source).
TEST(PreferenceTraining, ResumeMidDpoIsBitExact) {
  const std::string dir = test::fresh_dir("pref_resume");
  RunConfig c = preference_run(dir, Objective::dpo);
  c.train.steps = 4;
  c.train.save_interval = 2;
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  {
    DecoderLM start(c.model, grid, 9);
    save_model(start, c, dir + "/start.safetensors");
  }
  c.train.init_from = dir + "/start.safetensors";
  std::vector<float> whole;
  std::vector<double> losses;
  {
    Trainer t(c, grid);
    losses = t.run(true).losses;
    whole.assign(t.model().params().values(), t.model().params().values() + t.model().params().numel());
  }
  // Its step-2 checkpoint, continued in another folder.
  RunConfig second = c;
  second.train.out_dir = dir + "/second";
  second.train.resume = c.train.out_dir + "/checkpoints/step_00000002";
  Trainer t(second, grid);
  const TrainResult r = t.run(true);
  ASSERT_EQ(r.losses.size(), 2u);
  EXPECT_EQ(r.losses[0], losses[2]);
  EXPECT_EQ(r.losses[1], losses[3]);
  const std::vector<float> resumed(t.model().params().values(), t.model().params().values() + t.model().params().numel());
  EXPECT_EQ(resumed, whole);
}

}  // namespace
}  // namespace ff
