// A training run's folder as `fivefold report` reads it: out_dir/metrics.jsonl (one JSON record
// per step, see train/trainer.cpp), and out_dir/run_config.json and out_dir/layout.json when the
// run wrote them (train/run_record.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ff {

struct RunMetrics {
  std::string dir;                    // as given
  std::vector<nlohmann::json> steps;  // sorted by "step", one record per step
  nlohmann::json config, layout;      // null where the file is missing
  // The file's last line had no newline and was not JSON: a record still being written (a run
  // that is going on), left out.
  bool incomplete_tail = false;
  int64_t replaced_steps = 0;  // records of a step seen before, which replaced the earlier one
};

// Reads a run folder. A folder without metrics.jsonl, a line that is not a JSON object with a
// numeric "step" (not the incomplete last line) or an unreadable JSON file is a UserError naming
// the file (and line).
RunMetrics read_run(const std::string& dir);

// The (step, value) pairs of the records that hold a number under key, value times scale.
struct StepSeries {
  std::vector<double> step, value;
};
StepSeries metric_series(const RunMetrics& run, const std::string& key, double scale = 1.0);

// Whether any record holds key.
bool has_metric(const RunMetrics& run, const std::string& key);

}  // namespace ff
