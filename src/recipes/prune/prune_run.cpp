#include "recipes/prune/prune_run.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/progress.h"
#include "models/decoder_lm.h"
#include "models/layer_kind.h"
#include "train/data.h"
#include "train/model_source.h"
#include "train/trainer.h"

namespace ff {

CalibrationPass::CalibrationPass(DecoderLM& model, const ParallelGrid& grid)
    : model_(model), pp_(grid.pp()), mb_(model.new_micro_batch()),
      inputs_(static_cast<size_t>(model.num_chunks())) {}

void CalibrationPass::add(const int32_t* tokens, int64_t B, int64_t S, ImportanceStats& stats) {
  // Virtual stage vs = c P + p runs chunk c of stage p; it receives vs - 1's output and sends its
  // own to vs + 1 (tag: the receiving virtual stage), a chain, so each send completes once the
  // next stage has received it. Each chunk's input stays in its own buffer until the statistics
  // are taken (a layer's h_in of the depth score).
  model_.set_training(false);
  const int64_t P = pp_.size(), p = pp_.rank(), V = model_.num_chunks(), VS = P * V;
  const int64_t width = model_.stream_rows(B, S) * model_.config().d_model;
  for (int64_t c = 0; c < V; ++c) {
    const int64_t vs = c * P + p;
    std::vector<float>& input = inputs_[static_cast<size_t>(c)];
    if (vs > 0) {
      input.resize(static_cast<size_t>(width));
      pp_.recv(input.data(), width, static_cast<int>((vs - 1) % P), static_cast<int>(vs));
    }
    model_.forward_chunk(*mb_, c, tokens, nullptr, B, S, vs > 0 ? input.data() : nullptr);
    if (vs < VS - 1) {
      pp_.send(model_.chunk_output(*mb_, c), width, static_cast<int>((vs + 1) % P), static_cast<int>(vs + 1));
      pp_.wait_sends();
    }
  }
  model_.add_importance(*mb_, stats);
  stats.end_batch();
}

ImportanceStats calibrate(DecoderLM& model, const ParallelGrid& grid, const GptDataset& windows, int64_t samples,
                          int64_t micro_batch, bool progress) {
  FF_CHECK(samples > 0, "the calibration data is empty: it holds no window of model.seq_len + 1 tokens");
  const ModelConfig& c = model.config();
  ImportanceStats st;
  model.declare_importance(st);
  const int64_t B = micro_batch, S = c.seq_len, DP = grid.dp_size(), r = grid.dp().rank();
  std::vector<int32_t> tokens(static_cast<size_t>(B * S)), buf(static_cast<size_t>(S + 1));
  CalibrationPass pass(model, grid);
  // Batch k covers windows [k B DP, (k + 1) B DP), replica r taking its B; only whole batches of
  // the job are used, so every layout sees the same windows.
  const int64_t batches = samples / (B * DP);
  FF_CHECK(batches > 0, "%lld calibration windows are fewer than one batch of the job (micro_batch %lld x %lld data-"
           "parallel replicas)", (long long)samples, (long long)B, (long long)DP);
  Progress shown("calibration", batches * B * DP, ProgressUnit::count, "windows",
                 printing(progress && grid.world_rank() == 0));
  for (int64_t k = 0; k < batches; ++k) {
    for (int64_t b = 0; b < B; ++b) {
      windows.get_unshuffled((k * DP + r) * B + b, buf.data());
      std::copy(buf.begin(), buf.end() - 1, tokens.begin() + b * S);
    }
    pass.add(tokens.data(), B, S, st);
    shown.advance(B * DP);
  }
  shown.finish();
  // Each layer's entries hold their stage's sums (zeros on the other stages): the world's sum
  // gives every rank all of them.
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
  // Means per entry: each MoE layer's routed experts, mean ||output||_2 over the tokens routed to them.
  json means = json::object();
  for (const auto& [name, m] : st.raw_means()) means[name] = st.means(name);
  j["expert_mean_output_norm"] = means;
  json experts = json::object();
  for (size_t k = 0; k < plan.layers.size(); ++k)
    if (!plan.keep[k].experts.empty())
      experts[layer_prefix(pattern, static_cast<size_t>(plan.layers[k]))] = plan.keep[k].experts;
  j["kept_experts"] = experts;
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
  c.train.split = o.split;
  EvalData data = open_eval_data(c, o.part, grid.all(), quiet || grid.all().rank() != 0);
  DecoderLM model(c.model, grid, c.train.seed);
  load_model_source(m.source, model);
  m.samples = std::min(o.calib_samples, data.samples);
  m.stats = calibrate(model, grid, *data.windows, m.samples, o.micro_batch, o.progress && !quiet);
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
  {  // the targets are checked before any forward
    const ModelSource src = open_model_source(o.model);
    auto problems = prune_target_problems(src.config.model, o.targets);
    // The pruned model is to run on this job's layout (distillation puts the student on the
    // teacher's ranks and layout): its experts must divide over parallel.ep.
    const ParallelConfig& pc = grid.config();
    if (o.targets.num_experts > 0 && o.targets.num_experts % pc.ep != 0)
      problems.push_back(strprintf("--target_num_experts %lld: must be a multiple of parallel.ep = %lld (the pruned model "
                                   "runs on this layout, each EP rank holding as many experts)",
                                   (long long)o.targets.num_experts, (long long)pc.ep));
    if (o.targets.moe_ffn_hidden > 0 && o.targets.moe_ffn_hidden % pc.expert_tp() != 0)
      problems.push_back(strprintf("--target_moe_ffn_hidden %lld: must be a multiple of the expert-tensor-parallel size "
                                   "%lld (the pruned model runs on this layout)", (long long)o.targets.moe_ffn_hidden,
                                   (long long)pc.expert_tp()));
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
