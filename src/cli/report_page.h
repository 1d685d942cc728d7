// The HTML page of `fivefold report`: a legend of the runs (one colour each), a table of their
// parallel layouts and key settings with each resolved config in a <pre>, one line chart per
// metric with one path per run that recorded it (metrics no run recorded, or only as zeros,
// become a note instead of an empty chart), and per MoE run heatmaps of the expert load: a
// summary of layer x step (the most loaded expert over the mean) and one of expert x step per
// MoE layer (each expert's share of the layer's slots over 1/E). No script, no external file.
#pragma once
#include <string>
#include <vector>

#include "io/run_metrics.h"

namespace ff {

std::string report_html(const std::vector<RunMetrics>& runs);

// What the page calls each run: its folder's name, or the folder as given where two share a name.
std::vector<std::string> run_names(const std::vector<RunMetrics>& runs);
// The run's colour: a qualitative palette of 10, repeated.
std::string run_colour(size_t index);

// Per MoE layer, [E][steps] of each expert's share x E over the run's steps (NaN at a step without
// a record of that layer), and the steps. Empty for a run without expert_load.
struct ExpertLoad {
  std::vector<double> steps;
  std::vector<std::vector<std::vector<double>>> layers;  // [layer][expert][step]
};
ExpertLoad expert_load_of(const RunMetrics& run);

}  // namespace ff
