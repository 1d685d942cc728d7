#include "train/run_record.h"

#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "io/atomic_file.h"

namespace ff {

std::string layout_to_json(const ParallelGrid& grid) {
  const nlohmann::json j = {{"world_size", grid.world_size()}, {"tp", grid.tp().size()},
                            {"cp", grid.cp().size()},          {"dp", grid.dp_size()},
                            {"pp", grid.pp().size()},          {"ep", grid.ep().size()},
                            {"etp", grid.etp().size()},        {"edp", grid.edp_size()},
                            {"sequence_parallel", grid.config().sequence_parallel}};
  return j.dump(2);
}

void write_run_description(RunConfig& cfg, const ParallelGrid& grid) {
  write_file_atomically(cfg.train.out_dir + "/run_config.json", run_config_to_json(cfg) + "\n");
  write_file_atomically(cfg.train.out_dir + "/layout.json", layout_to_json(grid) + "\n");
}

namespace {
// Index among the model's MoE layers of the first MoE layer at or after pattern layer `layer`.
int64_t moe_layers_before(const std::string& pattern, int64_t layer) {
  int64_t n = 0;
  for (int64_t i = 0; i < layer; ++i) n += pattern[static_cast<size_t>(i)] == 'E';
  return n;
}
}  // namespace

std::vector<std::vector<double>> global_expert_load(const std::vector<int64_t>& stage_load, const DecoderLM& model,
                                                    const ModelConfig& cfg, const ParallelGrid& grid) {
  const std::string pattern = cfg.pattern();
  const int64_t E = cfg.num_experts, layers = moe_layers_before(pattern, static_cast<int64_t>(pattern.size()));
  if (layers == 0 || E == 0) return {};
  // [layers * E], this rank's counts at their global places, zeros elsewhere.
  std::vector<double> all(static_cast<size_t>(layers * E), 0.0);
  const bool counts = grid.config().sequence_parallel || grid.tp().rank() == 0;
  size_t next = 0;  // into stage_load: chunk by chunk, each chunk's MoE layers in order
  for (int64_t c = 0; c < model.num_chunks(); ++c) {
    const DecoderLM::ChunkRange r = model.chunk_range(c);
    const int64_t first = moe_layers_before(pattern, r.begin), n = moe_layers_before(pattern, r.end) - first;
    if (next + static_cast<size_t>(n * E) > stage_load.size()) break;  // a step that ran no micro-batch
    for (int64_t i = 0; i < n * E; ++i, ++next)
      if (counts) all[static_cast<size_t>(first * E + i)] = static_cast<double>(stage_load[next]);
  }
  grid.all().all_reduce_sum(all.data(), static_cast<int64_t>(all.size()));
  std::vector<std::vector<double>> out(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) out[static_cast<size_t>(l)].assign(all.begin() + l * E, all.begin() + (l + 1) * E);
  return out;
}

std::vector<std::vector<double>> load_shares(const std::vector<std::vector<double>>& counts) {
  std::vector<std::vector<double>> shares = counts;
  for (auto& row : shares) {
    double sum = 0;
    for (double c : row) sum += c;
    if (sum > 0)
      for (double& c : row) c /= sum;
  }
  return shares;
}

double resident_peak_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) * 1024.0;  // Linux reports KiB
}

double job_resident_peak_bytes(const ParallelGrid& grid) {
  double peak = resident_peak_bytes();
  grid.all().all_reduce_max(&peak, 1);
  return peak;
}

}  // namespace ff
