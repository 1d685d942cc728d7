#include "io/run_metrics.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/check.h"

namespace ff {

namespace {
std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f.good()) throw UserError(strprintf("'%s': cannot open it", path.c_str()));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A JSON file beside metrics.jsonl, or null where the run did not write it.
nlohmann::json optional_json(const std::string& path) {
  if (!std::filesystem::exists(path)) return nullptr;
  try {
    return nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw UserError(strprintf("'%s': not valid JSON (%s)", path.c_str(), e.what()));
  }
}

// The records of metrics.jsonl by step: a later record of a step replaces an earlier one.
void read_records(const std::string& path, RunMetrics& run) {
  const std::string text = read_text(path);
  std::map<int64_t, nlohmann::json> by_step;
  size_t begin = 0;
  for (int64_t n = 1; begin < text.size(); ++n) {
    size_t end = text.find('\n', begin);
    const bool last_unended = end == std::string::npos;
    if (last_unended) end = text.size();
    const std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      if (last_unended) {  // still being written
        run.incomplete_tail = true;
        break;
      }
      throw UserError(strprintf("%s line %lld: not valid JSON (%s)", path.c_str(), (long long)n, e.what()));
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer())
      throw UserError(strprintf("%s line %lld: a metrics record must be a JSON object with an integer \"step\"",
                                path.c_str(), (long long)n));
    const int64_t step = j["step"].get<int64_t>();
    run.replaced_steps += by_step.count(step);
    by_step[step] = std::move(j);
  }
  for (auto& [step, j] : by_step) run.steps.push_back(std::move(j));
}
}  // namespace

RunMetrics read_run(const std::string& dir) {
  RunMetrics run;
  run.dir = dir;
  const std::string metrics = (std::filesystem::path(dir) / "metrics.jsonl").string();
  if (!std::filesystem::is_directory(dir))
    throw UserError(strprintf("'%s': no such run folder (give the out_dir of a fivefold train run)", dir.c_str()));
  if (!std::filesystem::exists(metrics))
    throw UserError(strprintf("'%s' does not exist: '%s' is not the out_dir of a fivefold train run (or it has not "
                              "finished a step yet)", metrics.c_str(), dir.c_str()));
  read_records(metrics, run);
  run.config = optional_json((std::filesystem::path(dir) / "run_config.json").string());
  run.layout = optional_json((std::filesystem::path(dir) / "layout.json").string());
  return run;
}

StepSeries metric_series(const RunMetrics& run, const std::string& key, double scale) {
  StepSeries s;
  for (const auto& r : run.steps) {
    const auto it = r.find(key);
    if (it == r.end() || !it->is_number()) continue;
    s.step.push_back(r["step"].get<double>());
    s.value.push_back(it->get<double>() * scale);
  }
  return s;
}

bool has_metric(const RunMetrics& run, const std::string& key) {
  return std::any_of(run.steps.begin(), run.steps.end(), [&](const nlohmann::json& r) { return r.contains(key); });
}

}  // namespace ff
