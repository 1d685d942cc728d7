#include "recipes/spin.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/jsonl.h"
#include "train/generation.h"
#include "train/model_source.h"
#include "train/sft_data.h"
#include "train/trainer.h"

namespace ff {

namespace {
namespace fs = std::filesystem;

struct SftRecord {
  std::string prompt, response;
};

// The SFT data's prompt/response records; a record without a response is an error (SPIN pairs
// every prompt's SFT response with a generated one).
std::vector<SftRecord> read_sft_records(const TrainConfig& tc) {
  std::vector<SftRecord> out;
  for_each_jsonl(tc.data_path, "train.data_path: the SFT file, JSONL with prompt and response",
                 [&](const nlohmann::json& j, const std::string& where) {
    auto text = [&](const std::string& key) {
      FF_CHECK(j.is_object() && j.contains(key) && j[key].is_string() && !j[key].get<std::string>().empty(),
               "%s: SPIN pairs each prompt's SFT response with a generated one, so every record needs a non-empty "
               "\"%s\" (train.sft_prompt_key / sft_response_key name them)", where.c_str(), key.c_str());
      return j[key].get<std::string>();
    };
    out.push_back({text(tc.sft_prompt_key), text(tc.sft_response_key)});
  });
  FF_CHECK(!out.empty(), "train.data_path '%s' holds no SFT records for SPIN", tc.data_path.c_str());
  return out;
}

// The current model's answer to every prompt, paired as the rejected response with the SFT one;
// written by rank 0 to `path` (atomically). Returns the number of pairs.
int64_t make_pairs(const RunConfig& cfg, const std::vector<SftRecord>& records, const std::string& model_path,
                   int64_t iteration, const std::string& path, const ParallelGrid& grid) {
  const auto& tc = cfg.train;
  const ModelSource src = open_model_source(model_path);
  DecoderLM model(cfg.model, grid, tc.seed);
  load_model_source(src, model);
  const auto tok = load_tokenizer(tc.tokenizer_type, tc.tokenizer_path);
  SamplingOptions o;
  o.max_new_tokens = tc.spin_max_new_tokens;
  o.temperature = tc.spin_temperature;
  o.top_k = tc.spin_top_k;
  o.top_p = tc.spin_top_p;
  constexpr size_t kBatch = 32;  // prompts decoded together
  std::string text;
  int64_t pairs = 0, skipped = 0;
  for (size_t first = 0; first < records.size(); first += kBatch) {
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = first; i < std::min(records.size(), first + kBatch); ++i) {
      const std::string& p = records[i].prompt;
      prompts.push_back(tok->encode(tc.chat_template == ChatTemplate::none ? p : chat_prompt(p, tc.chat_template)));
    }
    o.seed = tc.seed * 1000003 + static_cast<uint64_t>(iteration) * 10007 + first;  // every batch its own streams
    const auto out = generate(model, grid, *tok, prompts, o);
    for (size_t k = 0; k < out.size(); ++k) {
      const SftRecord& r = records[first + k];
      if (out[k].text.empty() || out[k].text == r.response) {  // nothing to tell apart
        ++skipped;
        continue;
      }
      text += nlohmann::json{{tc.sft_prompt_key, r.prompt}, {tc.pref_chosen_key, r.response},
                             {tc.pref_rejected_key, out[k].text}}
                  .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
              "\n";
      ++pairs;
    }
  }
  FF_CHECK(pairs > 0, "SPIN iteration %lld: every generated response was empty or equal to the SFT response (%lld "
           "prompts): nothing to train on", (long long)iteration, (long long)skipped);
  if (grid.world_rank() == 0) write_file_atomically(path, text);
  grid.all().barrier();
  return pairs;
}
}  // namespace

void run_spin(const RunConfig& cfg, const ParallelGrid& grid, bool quiet) {
  const auto& tc = cfg.train;
  FF_CHECK(!tc.init_from.empty(), "SPIN starts from an SFT model: give train.init_from");
  FF_CHECK(cfg.model.lora_rank == 0, "SPIN promotes each iteration's whole model to the next reference; with LoRA "
           "that needs the adapters merged between iterations, which fivefold does not do yet: train without "
           "model.lora_rank (or run align dpo per iteration on merged models)");
  FF_CHECK(tc.data_format == DataFormat::sft, "SPIN reads SFT data (train.data_format = sft): prompt/response records");
  const std::vector<SftRecord> records = read_sft_records(tc);
  const bool lead = grid.world_rank() == 0;
  if (lead) fs::create_directories(tc.out_dir);
  std::string current = tc.init_from;
  for (int64_t k = 1; k <= tc.spin_iterations; ++k) {
    const std::string dir = strprintf("%s/iter-%lld", tc.out_dir.c_str(), (long long)k);
    const std::string model = dir + "/model.safetensors", pairs_path = dir + "/pairs.jsonl";
    if (fs::exists(model)) {  // done by an earlier start of this run
      if (lead && !quiet) std::printf("SPIN iteration %lld: done already (%s)\n", (long long)k, model.c_str());
      current = model;
      continue;
    }
    if (lead) fs::create_directories(dir);
    grid.all().barrier();
    int64_t pairs = 0;
    if (!fs::exists(pairs_path)) {
      pairs = make_pairs(cfg, records, current, k, pairs_path, grid);
      if (lead && !quiet)
        std::printf("SPIN iteration %lld: %lld pairs of SFT and generated responses (from %s) -> %s\n", (long long)k,
                    (long long)pairs, current.c_str(), pairs_path.c_str());
    }
    RunConfig it = cfg;
    it.train.data_format = DataFormat::preference;
    it.train.objective = Objective::dpo;
    it.train.data_path = pairs_path;
    it.train.init_from = current;
    it.train.reference = current;  // frozen: this iteration's starting model
    it.train.out_dir = dir;
    it.train.resume = fs::exists(dir + "/checkpoints/latest") ? dir + "/checkpoints" : "";
    Trainer trainer(it, grid);
    const TrainResult r = trainer.run(quiet);
    if (r.stopped) return;  // a signal: continue with the same command
    current = model;
    if (lead) {
      AppendFile log(tc.out_dir + "/spin.jsonl", /*truncate=*/k == 1);
      log.write_line(nlohmann::json{{"iteration", k}, {"valid_loss_before", r.first_valid_loss},
                                    {"valid_loss", r.final_valid_loss}, {"valid_accuracy", r.final_valid_accuracy},
                                    {"model", model}}.dump());
      if (!quiet)
        std::printf("SPIN iteration %lld: DPO validation loss %.4f -> %.4f, real ranked above generated %.1f%%\n",
                    (long long)k, r.first_valid_loss, r.final_valid_loss, 100.0 * r.final_valid_accuracy);
    }
  }
  if (lead) {
    fs::copy_file(current, tc.out_dir + "/model.safetensors", fs::copy_options::overwrite_existing);
    if (!quiet) std::printf("SPIN: %s is the model of iteration %lld\n", (tc.out_dir + "/model.safetensors").c_str(),
                            (long long)tc.spin_iterations);
  }
  grid.all().barrier();
}

}  // namespace ff
