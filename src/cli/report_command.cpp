#include "cli/report_command.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "cli/report_page.h"
#include "core/check.h"
#include "io/atomic_file.h"
#include "io/run_metrics.h"

namespace ff {

void add_report_command(CLI::App& app, ReportOptions& o) {
  o.app = app.add_subcommand("report", "one self-contained HTML page of training runs' curves (loss, lr, grad norm, "
                                       "throughput, MoE losses, memory), expert load heatmaps, configs and layouts");
  o.app->add_option("runs", o.runs, "out_dir folders of fivefold train runs (each with metrics.jsonl)")->required();
  o.app->add_option("--out", o.out, "the HTML file to write; default RUN_DIR/report.html for one run, "
                                    "./report.html for several");
}

std::string report_path(const ReportOptions& o) {
  if (!o.out.empty()) return o.out;
  if (o.runs.size() == 1) return (std::filesystem::path(o.runs[0]) / "report.html").string();
  return "report.html";
}

namespace {
// A file that cannot be written is one error naming it, before the page is drawn.
void check_writable(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  if (fs::is_directory(path)) throw UserError(strprintf("--out '%s' is a folder; name the HTML file", path.c_str()));
  if (!fs::is_directory(parent))
    throw UserError(strprintf("cannot write the report '%s': the folder '%s' does not exist", path.c_str(),
                              parent.string().c_str()));
  if (::access(parent.c_str(), W_OK) != 0 || (fs::exists(path) && ::access(path.c_str(), W_OK) != 0))
    throw UserError(strprintf("cannot write the report '%s': %s", path.c_str(), std::strerror(errno)));
}
}  // namespace

int run_report_command(const ReportOptions& o) {
  std::vector<RunMetrics> runs;
  for (const auto& dir : o.runs) runs.push_back(read_run(dir));
  const std::string out = report_path(o);
  check_writable(out);
  write_file_atomically(out, report_html(runs));
  size_t steps = 0;
  for (const auto& r : runs) steps += r.steps.size();
  std::printf("wrote %s (%zu run%s, %zu steps)\n", out.c_str(), runs.size(), runs.size() == 1 ? "" : "s", steps);
  return 0;
}

}  // namespace ff
