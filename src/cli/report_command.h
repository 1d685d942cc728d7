// `fivefold report RUN_DIR [RUN_DIR...] [--out FILE]`: one self-contained HTML page (inline SVG
// drawn by io/svg_chart.h, no script) with the runs' curves overlaid, their expert load as
// heatmaps and their config and parallel layout (cli/report_page.h). The default FILE is
// RUN_DIR/report.html for one run, ./report.html for several.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace ff {

struct ReportOptions {
  std::vector<std::string> runs;
  std::string out;
  CLI::App* app = nullptr;
};

void add_report_command(CLI::App& app, ReportOptions& o);
int run_report_command(const ReportOptions& o);
// Where the page goes: --out, or the default above.
std::string report_path(const ReportOptions& o);

}  // namespace ff
