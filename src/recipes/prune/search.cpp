#include "recipes/prune/search.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/atomic_file.h"
#include "models/config.h"
#include "models/decoder_lm.h"
#include "recipes/prune/prune_run.h"
#include "train/data.h"
#include "train/generation.h"
#include "train/trainer.h"

namespace ff {

std::string SearchCandidate::describe() const {
  std::string s = strprintf("d_model %lld", (long long)config.d_model);
  const std::string p = config.pattern();
  if (p.find('-') != std::string::npos) s += strprintf(", ffn %lld", (long long)config.ffn_hidden);
  if (p.find('M') != std::string::npos)
    s += strprintf(", mamba %lld x %lld", (long long)config.mamba_num_heads, (long long)config.mamba_head_dim);
  return s + strprintf(", %zu layers", p.size());
}

namespace {

// The sizes of one width dimension to try: n at the fractions 8/8 .. 4/8, rounded down to a
// multiple of `divisor` (at least one divisor), distinct; 0 stands for n itself (keep all).
std::vector<int64_t> width_grid(int64_t n, int64_t divisor) {
  std::vector<int64_t> out = {0};
  for (int64_t eighths = 7; eighths >= 4; --eighths) {
    const int64_t v = std::max(divisor, n * eighths / 8 / divisor * divisor);
    if (v < n && std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

}  // namespace

std::vector<SearchCandidate> search_candidates(const ModelConfig& c, const ImportanceStats& stats,
                                               const SearchOptions& o) {
  const std::string pattern = c.pattern();
  const bool mlp = pattern.find('-') != std::string::npos, mamba = pattern.find('M') != std::string::npos;
  const std::vector<int64_t> none = {0};
  const auto dims = width_grid(c.d_model, 8), ffns = mlp ? width_grid(c.ffn_hidden, 8) : none,
             heads = mamba ? width_grid(c.mamba_num_heads, c.mamba_groups) : none,
             channels = mamba ? width_grid(c.mamba_head_dim, 4) : none;
  const double lo = (1.0 - o.tolerance) * static_cast<double>(o.target_params);
  std::vector<SearchCandidate> all;
  auto consider = [&](const PruneTargets& t, bool depth_only) {
    if (!prune_target_problems(c, t).empty()) return;
    SearchCandidate k;
    k.targets = t;
    k.config = plan_pruning(c, stats, t).to;
    k.params = count_parameters(k.config);
    k.depth_only = depth_only;
    if (k.params <= o.target_params && static_cast<double>(k.params) >= lo) all.push_back(k);
  };
  for (int64_t d : dims)
    for (int64_t f : ffns)
      for (int64_t h : heads)
        for (int64_t p : channels) {
          PruneTargets t;
          t.d_model = d;
          t.ffn_hidden = f;
          t.mamba_num_heads = h;
          t.mamba_head_dim = p;
          consider(t, false);
        }
  const int64_t L = static_cast<int64_t>(pattern.size());
  if (o.depth)
    for (int64_t keep = L - 1; keep >= (L + 1) / 2; --keep) {
      PruneTargets t;
      t.layers = keep;
      consider(t, true);
    }
  std::stable_sort(all.begin(), all.end(), [](const SearchCandidate& a, const SearchCandidate& b) {
    return a.params > b.params;
  });
  return all;
}

std::vector<SearchCandidate> choose_candidates(const std::vector<SearchCandidate>& all, const SearchOptions& o) {
  std::vector<SearchCandidate> chosen(all.begin(), all.begin() + std::min<int64_t>(o.candidates, all.size()));
  const bool has_depth = std::any_of(chosen.begin(), chosen.end(), [](const auto& k) { return k.depth_only; });
  const auto depth = std::find_if(all.begin(), all.end(), [](const auto& k) { return k.depth_only; });
  if (o.depth && !has_depth && depth != all.end() && !chosen.empty()) chosen.back() = *depth;
  return chosen;
}

namespace {

struct SearchRow {
  std::string name;  // "teacher" or the candidate's folder
  SearchCandidate candidate;
  double init_loss = 0, loss = 0, decode_tokens_per_s = 0;
  bool pareto = false;
};

// Greedy decode of the prompts, one untimed pass and three timed ones: the median tokens/s.
double decode_speed(DecoderLM& model, const ParallelGrid& grid, const Tokenizer& tok,
                    const std::vector<std::vector<int32_t>>& prompts, int64_t new_tokens) {
  SamplingOptions s;
  s.temperature = 0;
  s.max_new_tokens = new_tokens;
  std::vector<double> rates;
  for (int pass = 0; pass < 4; ++pass) {
    GenerationStats st;
    generate(model, grid, tok, prompts, s, &st);
    if (pass > 0) rates.push_back(st.seconds > 0 ? static_cast<double>(st.new_tokens) / st.seconds : 0.0);
  }
  std::sort(rates.begin(), rates.end());
  double rate = rates[1];
  grid.all().broadcast(&rate, sizeof rate, 0);  // the ranks' clocks differ: rank 0's figure
  return rate;
}

std::string table(const std::vector<SearchRow>& rows, double teacher_speed) {
  std::string t = "| rank | model | parameters | loss at init | loss distilled | decode tokens/s | vs teacher | pareto |\n"
                  "|---:|---|---:|---:|---:|---:|---:|:---:|\n";
  int rank = 0;
  for (const SearchRow& r : rows) {
    const bool teacher = r.name == "teacher";
    t += strprintf("| %s | %s%s | %.3fM | %s | %.4f | %.0f | %.2fx | %s |\n", teacher ? "" : std::to_string(++rank).c_str(),
                   teacher ? "teacher: " : "", r.candidate.describe().c_str(), r.candidate.params / 1e6,
                   teacher ? "" : strprintf("%.4f", r.init_loss).c_str(), r.loss, r.decode_tokens_per_s,
                   r.decode_tokens_per_s / teacher_speed, teacher ? "" : (r.pareto ? "yes" : ""));
  }
  return t;
}

}  // namespace

void run_search(const RunConfig& base, const SearchOptions& o, const ParallelGrid& grid) {
  namespace fs = std::filesystem;
  const auto& tc = base.train;
  FF_CHECK(!tc.init_from.empty(), "fivefold search: give the model to compress with --init_from (it is also the teacher)");
  FF_CHECK(o.target_params > 0, "fivefold search: give the parameter budget with --target_params N");
  FF_CHECK(o.tolerance > 0 && o.tolerance < 1, "--search_tolerance %g: must be in (0, 1)", o.tolerance);
  FF_CHECK(o.candidates >= 1 && o.decode_batch >= 1 && o.decode_tokens >= 1,
           "--search_candidates, --decode_batch and --decode_tokens must be >= 1");
  const bool lead = grid.all().rank() == 0;
  PruneRunOptions po;
  po.model = tc.init_from;
  po.data = tc.data_path;
  po.calib_samples = o.calib_samples;
  po.micro_batch = tc.micro_batch;
  po.split = tc.split;  // calibrated on the training documents; the candidates validate on the others
  const CalibratedModel m = calibrate_model(po, grid, !lead);
  const int64_t full = count_parameters(m.config.model);
  if (o.target_params >= full)
    throw UserError(strprintf("--target_params %lld: the model has %lld parameters; give a smaller budget",
                              (long long)o.target_params, (long long)full));
  std::vector<SearchCandidate> all = search_candidates(m.config.model, m.stats, o);
  all.erase(std::remove_if(all.begin(), all.end(), [&](const SearchCandidate& k) {
              return !layout_problems(k.config, base.parallel).empty();  // it must train on this job's layout
            }), all.end());
  if (all.empty())
    throw UserError(strprintf("no candidate of %s has between %.0f and %lld parameters (the model: %lld): raise "
                              "--search_tolerance or change --target_params", m.config.model.pattern().c_str(),
                              (1 - o.tolerance) * o.target_params, (long long)o.target_params, (long long)full));
  const std::vector<SearchCandidate> chosen = choose_candidates(all, o);
  if (lead) {
    std::printf("search: %zu candidates of %.2fM to %.2fM parameters (the model %.2fM) from %lld calibration windows; "
                "distilling %zu for %lld steps each\n", all.size(), (1 - o.tolerance) * o.target_params / 1e6,
                o.target_params / 1e6, full / 1e6, (long long)m.samples, chosen.size(), (long long)tc.steps);
    std::fflush(stdout);
  }
  // The decode prompts: the first 16 tokens of the first validation windows.
  EvalData valid = open_eval_data(m.config, "valid", grid.all(), true);
  FF_CHECK(valid.samples > 0, "the validation part of %s holds no window of model.seq_len + 1 tokens", tc.data_path.c_str());
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> window(static_cast<size_t>(m.config.model.seq_len + 1));
  for (int64_t b = 0; b < o.decode_batch; ++b) {
    valid.windows->get_unshuffled(b % valid.samples, window.data());
    prompts.emplace_back(window.begin(), window.begin() + std::min<int64_t>(16, m.config.model.seq_len / 2));
  }

  std::vector<SearchRow> rows;
  {  // the teacher: its validation loss (no steps) and decode speed
    RunConfig t = base;
    t.train.steps = 0;
    t.train.out_dir = tc.out_dir + "/teacher";
    if (lead) fs::create_directories(t.train.out_dir);
    grid.all().barrier();
    Trainer trainer(t, grid);
    const TrainResult r = trainer.run(true);
    SearchRow row{"teacher", {}, r.first_valid_loss, r.first_valid_loss, 0, false};
    row.candidate.config = m.config.model;
    row.candidate.params = full;
    row.decode_tokens_per_s = decode_speed(trainer.model(), grid, *valid.tokenizer, prompts, o.decode_tokens);
    rows.push_back(row);
  }
  for (size_t k = 0; k < chosen.size(); ++k) {
    const std::string dir = strprintf("%s/candidates/%zu", tc.out_dir.c_str(), k + 1);
    if (lead) {
      fs::create_directories(dir);
      write_pruned_model(m, plan_pruning(m.config.model, m.stats, chosen[k].targets), dir + "/init.safetensors");
    }
    grid.all().barrier();
    RunConfig ck = base;
    ck.model = chosen[k].config;
    ck.model.precision = base.model.precision;  // what the run chose on top of the source's architecture
    ck.model.seq_len = base.model.seq_len;
    ck.model.head_chunk_rows = 0;  // distillation reads every row's logits
    ck.train.init_from = dir + "/init.safetensors";
    ck.train.teacher = tc.init_from;
    ck.train.out_dir = dir;
    const auto problems = ck.validate(grid.world_size());
    if (!problems.empty()) throw UserError("candidate " + chosen[k].describe() + ":" + join_problems(problems));
    Trainer trainer(ck, grid);
    const TrainResult r = trainer.run(true);
    SearchRow row{dir, chosen[k], r.first_valid_loss, r.final_valid_loss, 0, false};
    row.decode_tokens_per_s = decode_speed(trainer.model(), grid, *valid.tokenizer, prompts, o.decode_tokens);
    if (lead) {
      std::printf("  %zu/%zu %s (%.3fM): validation loss %.4f at init, %.4f distilled; %.0f decode tokens/s\n", k + 1,
                  chosen.size(), chosen[k].describe().c_str(), chosen[k].params / 1e6, row.init_loss, row.loss,
                  row.decode_tokens_per_s);
      std::fflush(stdout);
    }
    rows.push_back(row);
  }
  // Ranked by the distilled validation loss; Pareto: no other candidate both lower and faster.
  std::stable_sort(rows.begin() + 1, rows.end(), [](const SearchRow& a, const SearchRow& b) { return a.loss < b.loss; });
  for (size_t i = 1; i < rows.size(); ++i) {
    rows[i].pareto = true;
    for (size_t j = 1; j < rows.size(); ++j)
      if (j != i && rows[j].loss < rows[i].loss && rows[j].decode_tokens_per_s > rows[i].decode_tokens_per_s)
        rows[i].pareto = false;
  }
  if (!lead) return;
  const std::string md = table(rows, rows[0].decode_tokens_per_s);
  nlohmann::json j = nlohmann::json::array();
  for (const SearchRow& r : rows)
    j.push_back({{"name", r.name}, {"model", r.candidate.describe()}, {"pattern", r.candidate.config.pattern()},
                 {"parameters", r.candidate.params}, {"loss_at_init", r.init_loss}, {"loss", r.loss},
                 {"decode_tokens_per_s", r.decode_tokens_per_s}, {"pareto", r.pareto}});
  write_file_atomically(tc.out_dir + "/search.json", j.dump(1) + "\n");
  write_file_atomically(tc.out_dir + "/search.md", md);
  std::printf("\n%s\nthe best: %s/model.safetensors (briefly distilled) from %s/init.safetensors; distil it fully with "
              "fivefold train --init_from %s/init.safetensors --teacher %s\n(table: %s/search.md)\n", md.c_str(),
              rows[1].name.c_str(), rows[1].name.c_str(), rows[1].name.c_str(), tc.init_from.c_str(),
              tc.out_dir.c_str());
}

}  // namespace ff
