#include "recipes/prune/prune_run.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "models/decoder_lm.h"
#include "models/layer_kind.h"
#include "train/data.h"
#include "train/model_source.h"
#include "train/trainer.h"

namespace ff {

ImportanceStats calibrate(DecoderLM& model, const ParallelGrid& grid, const GptDataset& windows, int64_t samples,
                          int64_t micro_batch) {
  FF_CHECK(grid.pp().size() == 1, "fivefold prune calibrates without pipeline stages: use parallel.pp = 1 (TP, CP, "
           "DP and EP are fine)");
  FF_CHECK(samples > 0, "the calibration data is empty: it holds no window of model.seq_len + 1 tokens");
  const ModelConfig& c = model.config();
  ImportanceStats st;
  model.declare_importance(st);
  model.set_training(false);
  const int64_t B = micro_batch, S = c.seq_len, DP = grid.dp_size(), r = grid.dp().rank();
  std::vector<int32_t> tokens(static_cast<size_t>(B * S)), buf(static_cast<size_t>(S + 1));
  auto mb = model.new_micro_batch();
  // Batch k covers windows [k B DP, (k + 1) B DP), replica r taking its B; only whole batches of
  // the job are used, so every layout sees the same windows.
  const int64_t batches = samples / (B * DP);
  FF_CHECK(batches > 0, "%lld calibration windows are fewer than one batch of the job (micro_batch %lld x %lld data-"
           "parallel replicas)", (long long)samples, (long long)B, (long long)DP);
  for (int64_t k = 0; k < batches; ++k) {
    for (int64_t b = 0; b < B; ++b) {
      windows.get_unshuffled((k * DP + r) * B + b, buf.data());
      std::copy(buf.begin(), buf.end() - 1, tokens.begin() + b * S);
    }
    model.forward(*mb, tokens.data(), nullptr, B, S);
    model.add_importance(*mb, st);
    st.end_batch();
  }
  st.finish(grid.all());
  return st;
}

namespace {

using nlohmann::json;

void write_scores(const std::string& path, const ImportanceStats& st, const PrunePlan& plan) {
  json j = {{"batches", st.batches()}, {"from_pattern", plan.from.pattern()}, {"to_pattern", plan.to.pattern()},
            {"kept_embedding", plan.embedding}, {"kept_layers", plan.layers}};
  json scores = json::object();
  for (const auto& [name, acc] : st.raw()) scores[name] = st.scores(name);
  j["scores"] = scores;
  // Depth: 1 - cos(h_in, h_out) of each layer, by its pre-norm's name.
  json depth = json::object();
  const std::string pattern = plan.from.pattern();
  const auto kinds = plan.from.layers();
  for (size_t k = 0; k < pattern.size(); ++k) {
    const std::string norm = layer_prefix(pattern, k) + "." + layer_kind(kinds[k]).norm;
    depth[norm] = st.mean(norm);
  }
  j["depth_1_minus_cos"] = depth;
  std::ofstream f(path);
  f << j.dump(1) << "\n";
  FF_CHECK(f.good(), "cannot write the importance scores to '%s'", path.c_str());
}

}  // namespace

CalibratedModel calibrate_model(const PruneRunOptions& o, const ParallelGrid& grid, bool quiet) {
  CalibratedModel m;
  m.source = open_model_source(o.model);
  RunConfig& c = m.config;
  c = m.source.config;
  c.parallel = grid.config();
  c.train.init_from = "";
  c.train.data_path = o.data;
  m.tokenizer = model_tokenizer(m.source, o.tokenizer);
  c.train.tokenizer_type = m.tokenizer.type;  // the data is prepared with the model's tokenizer (as fivefold eval does)
  c.train.tokenizer_path = m.tokenizer.type == TokenizerType::byte ? "" :
      (o.tokenizer ? m.tokenizer.name : materialise_tokenizer(m.tokenizer, std::filesystem::path(o.data).parent_path().string() + "/.fivefold",
                                                             grid.all()));
  const auto layout = layout_problems(c.model, c.parallel);
  FF_CHECK(layout.empty(), "this model cannot use this parallel layout:%s", join_problems(layout).c_str());
  EvalData data = open_eval_data(c, "all", grid.all(), quiet || grid.all().rank() != 0);
  DecoderLM model(c.model, grid, c.train.seed);
  load_model_source(m.source, model);
  m.samples = std::min(o.calib_samples, data.samples);
  m.stats = calibrate(model, grid, *data.windows, m.samples, o.micro_batch);
  return m;
}

void write_pruned_model(const CalibratedModel& m, const PrunePlan& plan, const std::string& path) {
  Communicator self = Communicator::self();
  ParallelGrid one(self, ParallelConfig{});
  RunConfig pc = m.config;
  pc.model = plan.to;
  pc.parallel = ParallelConfig{};
  DecoderLM pruned(plan.to, one, m.config.train.seed);
  load_model_source(m.source, pruned, {}, [&](const TensorFetch& f, const std::string& n, HostTensor& t) {
    return pruned_tensor(plan, f, n, t);
  });
  save_model(pruned, pc, path, &m.tokenizer);
}

PrunePlan run_prune(const PruneRunOptions& o, const ParallelGrid& grid, bool quiet) {
  FF_CHECK(!o.out.empty(), "fivefold prune: give --out FILE (the pruned model file)");
  {
    const ModelSource src = open_model_source(o.model);  // the targets are checked before any forward
    const auto problems = prune_target_problems(src.config.model, o.targets);
    if (!problems.empty()) throw UserError("cannot prune to these sizes:" + join_problems(problems));
  }
  const CalibratedModel m = calibrate_model(o, grid, quiet);
  const PrunePlan plan = plan_pruning(m.config.model, m.stats, o.targets);
  if (grid.all().rank() == 0) {
    write_scores(o.scores.empty() ? o.out + ".scores.json" : o.scores, m.stats, plan);
    write_pruned_model(m, plan, o.out);
    if (!quiet)
      std::printf("pruned %s (%s, %.2fM parameters) -> %s (%s, %.2fM parameters) from %lld calibration windows\n",
                  m.source.path.c_str(), plan.from.pattern().c_str(), count_parameters(plan.from) / 1e6, o.out.c_str(),
                  plan.to.pattern().c_str(), count_parameters(plan.to) / 1e6, (long long)m.samples);
  }
  grid.all().barrier();
  return plan;
}

}  // namespace ff
