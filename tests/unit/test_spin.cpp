// SPIN (recipes/spin.h): iterations pair SFT responses with the current model's own, train with
// DPO against it, and promote the result; a second start with the same command skips the
// finished iterations and redoes an unfinished one exactly; SFT data without responses is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "recipes/spin.h"
#include "train/trainer.h"
#include "test_util.h"

namespace ff {
namespace {

namespace fs = std::filesystem;

RunConfig spin_run(const std::string& dir) {
  RunConfig c;
  c.model = test::small_model("*-", ByteTokenizer::kVocabSize);
  c.model.seq_len = 16;
  c.optim.lr = 3e-3;
  c.optim.warmup_steps = 0;
  c.train.data_format = DataFormat::sft;
  c.train.tokenizer_type = TokenizerType::byte;
  c.train.split = "75,25,0";
  c.train.micro_batch = 4;
  c.train.steps = 3;
  c.train.eval_samples = 8;
  c.train.peak_tflops = 1;
  c.train.spin_iterations = 2;
  c.train.spin_max_new_tokens = 6;
  c.train.out_dir = dir + "/spin";
  c.train.data_path = dir + "/sft.jsonl";
  std::ofstream f(c.train.data_path);
  for (int i = 0; i < 16; ++i)
    f << nlohmann::json{{"prompt", "n" + std::to_string(i) + "?"}, {"response", " ok " + std::to_string(i)}}.dump() << "\n";
  return c;
}

std::vector<nlohmann::json> records(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

TEST(Spin, IterationsPromoteTheirModelAndAStartAgainRedoesOnlyWhatIsMissing) {
  const std::string dir = test::fresh_dir("spin");
  RunConfig c = spin_run(dir);
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  {
    DecoderLM sft(c.model, grid, 3);
    save_model(sft, c, dir + "/sft.safetensors");
  }
  c.train.init_from = dir + "/sft.safetensors";
  run_spin(c, grid, true);
  const auto log = records(c.train.out_dir + "/spin.jsonl");
  ASSERT_EQ(log.size(), 2u);
  for (const auto& r : log) {  // each iteration starts at its reference: the DPO loss is log 2
    EXPECT_NEAR(r["valid_loss_before"].get<double>(), std::log(2.0), 1e-6);
    EXPECT_LT(r["valid_loss"].get<double>(), r["valid_loss_before"].get<double>());
  }
  // Each pair: the SFT response chosen, the model's own answer rejected.
  for (const auto& p : records(c.train.out_dir + "/iter-1/pairs.jsonl")) {
    EXPECT_EQ(p["chosen"].get<std::string>().rfind(" ok ", 0), 0u);
    EXPECT_NE(p["rejected"], p["chosen"]);
  }
  const std::string it1 = c.train.out_dir + "/iter-1/model.safetensors", it2 = c.train.out_dir + "/iter-2/model.safetensors";
  EXPECT_EQ(bytes_of(c.train.out_dir + "/model.safetensors"), bytes_of(it2));
  // Started again without iteration 2's model: iteration 1 is left as it is, iteration 2 trains
  // again on its pairs from iteration 1's model, to the same bytes.
  const std::string want = bytes_of(it2);
  const auto t1 = fs::last_write_time(it1);
  fs::remove(it2);
  fs::remove_all(c.train.out_dir + "/iter-2/checkpoints");
  fs::remove(c.train.out_dir + "/iter-2/metrics.jsonl");
  run_spin(c, grid, true);
  EXPECT_EQ(fs::last_write_time(it1), t1);
  EXPECT_EQ(bytes_of(it2), want);
}

TEST(Spin, SftDataWithoutResponsesIsRefused) {
  const std::string dir = test::fresh_dir("spin_bad");
  RunConfig c = spin_run(dir);
  std::ofstream(c.train.data_path, std::ios::app) << R"({"prompt": "no answer here"})" << "\n";
  c.train.init_from = dir + "/none.safetensors";
  Communicator world = Communicator::world();
  ParallelGrid grid(world, c.parallel);
  try {
    run_spin(c, grid, true);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("line 17"), std::string::npos) << msg;
    EXPECT_NE(msg.find("non-empty \"response\""), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace ff
