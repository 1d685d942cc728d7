#include "cli/report_page.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "core/check.h"
#include "io/svg_chart.h"

namespace ff {

namespace {
// One line chart per metric of metrics.jsonl: its key, title, y-axis label, scale and the factor
// its values are shown in (MFU in percent, memory in MiB).
struct MetricChart {
  const char* key;
  const char* title;
  const char* unit;
  Scale scale;
  double factor;
};
constexpr MetricChart kCharts[] = {
    {"loss", "training loss", "nats / token", Scale::linear, 1},
    {"valid_loss", "validation loss", "nats / token", Scale::linear, 1},
    {"lr", "learning rate", "lr (log)", Scale::log, 1},
    {"grad_norm", "gradient norm", "global L2 norm (log)", Scale::log, 1},
    {"tokens_per_s", "throughput", "tokens / s (job)", Scale::linear, 1},
    {"mfu", "model FLOPs utilisation", "% of peak per rank", Scale::linear, 100},
    {"aux_loss", "MoE load-balancing loss", "aux loss", Scale::linear, 1},
    {"z_loss", "router z-loss", "z-loss", Scale::linear, 1},
    {"dropped_fraction", "dropped (token, expert) slots", "fraction of routed", Scale::linear, 1},
    {"peak_memory_bytes", "peak resident memory", "MiB (largest rank)", Scale::linear, 1.0 / (1 << 20)},
};
constexpr size_t kMaxHeatmapColumns = 200;  // steps are averaged in bins beyond this

std::string note(const std::string& metric, const std::string& text) {
  return "<li class=\"note\" data-metric=\"" + xml_escape(metric) + "\">" + xml_escape(text) + "</li>";
}

// The chart of one metric over every run, or a note saying why there is none.
std::string metric_figure(const MetricChart& m, const std::vector<RunMetrics>& runs,
                          const std::vector<std::string>& names, std::string& notes) {
  LineChart chart(m.title, "step", m.unit, m.scale);
  bool recorded = false, nonzero = false;
  size_t drawn = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    StepSeries s = metric_series(runs[i], m.key, m.factor);
    recorded |= !s.step.empty();
    for (double v : s.value) nonzero |= std::isfinite(v) && v != 0;
    LineSeries ls{names[i], run_colour(i), std::move(s.step), std::move(s.value)};
    drawn += has_point(ls, m.scale);
    chart.add(std::move(ls));
  }
  if (!recorded) {
    notes += note(m.key, std::string(m.title) + ": no run recorded " + m.key);
    return "";
  }
  if (!nonzero) {
    notes += note(m.key, std::string(m.title) + ": 0 at every step of every run");
    return "";
  }
  if (!chart.has_data()) {
    notes += note(m.key, std::string(m.title) + ": no value to draw on a log scale (none positive)");
    return "";
  }
  return strprintf("<figure class=\"chart\" data-metric=\"%s\" data-runs=\"%zu\">", m.key, drawn) + chart.svg() +
         "</figure>";
}

std::string legend(const std::vector<std::string>& names) {
  std::string s = "<div class=\"legend\">";
  for (size_t i = 0; i < names.size(); ++i)
    s += strprintf("<span class=\"run\" data-run=\"%zu\"><span class=\"swatch\" style=\"background:%s\"></span>%s</span>",
                   i, run_colour(i).c_str(), xml_escape(names[i]).c_str());
  return s + "</div>";
}

// A config field as text, "-" where the run has none.
std::string field(const nlohmann::json& config, const char* section, const char* key) {
  if (!config.is_object() || !config.contains(section) || !config[section].contains(key)) return "-";
  const auto& v = config[section][key];
  return v.is_string() ? (v.get<std::string>().empty() ? "-" : v.get<std::string>()) : v.dump();
}

std::string layout_value(const RunMetrics& r, const char* key) {
  if (r.layout.is_object() && r.layout.contains(key)) return r.layout[key].dump();
  if (std::string(key) == "sequence_parallel") return field(r.config, "parallel", key);
  const std::set<std::string> in_config = {"tp", "cp", "pp", "ep", "etp"};
  return in_config.count(key) ? field(r.config, "parallel", key) : "-";
}

std::string cell(const std::string& s) { return "<td>" + xml_escape(s) + "</td>"; }

std::string steps_text(const RunMetrics& r) {
  if (r.steps.empty()) return "none";
  return strprintf("%lld-%lld (%zu)", (long long)r.steps.front()["step"].get<int64_t>(),
                   (long long)r.steps.back()["step"].get<int64_t>(), r.steps.size());
}

// A row's first cells: the run's colour and name (its folder on hover).
std::string run_cells(const RunMetrics& r, const std::string& name, size_t i) {
  return strprintf("<tr data-run=\"%zu\"><td><span class=\"swatch\" style=\"background:%s\"></span></td>", i,
                   run_colour(i).c_str()) +
         "<td title=\"" + xml_escape(r.dir) + "\">" + xml_escape(name) + "</td>";
}

// The runs' parallel layouts: the grid's sizes (layout.json; the config's where a run has none).
std::string layout_table(const std::vector<RunMetrics>& runs, const std::vector<std::string>& names) {
  static const char* layout[] = {"world_size", "tp", "cp", "dp", "pp", "ep", "etp", "edp", "sequence_parallel"};
  std::string s = "<table class=\"layout\"><thead><tr><th></th><th>run</th><th>steps</th>";
  for (const char* k : layout) s += std::string("<th>") + (std::string(k) == "sequence_parallel" ? "SP" : k) + "</th>";
  s += "</tr></thead><tbody>";
  for (size_t i = 0; i < runs.size(); ++i) {
    s += run_cells(runs[i], names[i], i) + cell(steps_text(runs[i]));
    for (const char* k : layout) s += cell(layout_value(runs[i], k));
    s += "</tr>";
  }
  return s + "</tbody></table>";
}

// The settings that tell runs apart, from each run's resolved config.
std::string settings_table(const std::vector<RunMetrics>& runs, const std::vector<std::string>& names) {
  static const std::pair<const char*, const char*> settings[] = {
      {"train", "model_preset"}, {"model", "layer_pattern"}, {"model", "d_model"},     {"model", "num_layers"},
      {"model", "num_experts"},  {"model", "moe_top_k"},     {"model", "seq_len"},     {"train", "micro_batch"},
      {"train", "grad_accum"},   {"train", "steps"},         {"optim", "lr"},          {"model", "precision"}};
  std::string s = "<table class=\"settings\"><thead><tr><th></th><th>run</th>";
  for (const auto& [sec, k] : settings) s += std::string("<th>") + k + "</th>";
  s += "</tr></thead><tbody>";
  for (size_t i = 0; i < runs.size(); ++i) {
    s += run_cells(runs[i], names[i], i);
    for (const auto& [sec, k] : settings) s += cell(field(runs[i].config, sec, k));
    s += "</tr>";
  }
  return s + "</tbody></table>";
}

// Each run's resolved config as written at its start, and what the reader left out.
std::string run_details(const std::vector<RunMetrics>& runs, const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = runs[i];
    s += strprintf("<details class=\"config\" data-run=\"%zu\"><summary>resolved config of %s</summary>", i,
                   xml_escape(names[i]).c_str());
    s += r.config.is_null() ? "<p>this run wrote no run_config.json (a run from before fivefold wrote one)</p>"
                            : "<pre>" + xml_escape(r.config.dump(2)) + "</pre>";
    s += "</details>";
    if (r.incomplete_tail)
      s += "<p class=\"run-note\">" + xml_escape(names[i]) + ": the last line of metrics.jsonl is incomplete (a run "
           "still going?) and is left out</p>";
    if (r.replaced_steps > 0)
      s += strprintf("<p class=\"run-note\">%s: %lld steps were recorded twice; the later record is shown</p>",
                     xml_escape(names[i]).c_str(), (long long)r.replaced_steps);
  }
  return s;
}

std::string layer_title(size_t layer) { return strprintf("MoE layer %zu", layer); }

// One run's heatmaps: layer x step of max / mean, then expert x step per layer.
std::string expert_load_section(const ExpertLoad& load, const std::string& name, size_t index) {
  const size_t L = load.layers.size();
  std::vector<std::vector<double>> summary(L);
  std::vector<std::string> layer_labels;
  for (size_t l = 0; l < L; ++l) {
    layer_labels.push_back(strprintf("%zu", l));
    for (size_t c = 0; c < load.steps.size(); ++c) {
      double mx = NAN;
      for (const auto& expert : load.layers[l])
        if (std::isfinite(expert[c])) mx = std::isfinite(mx) ? std::max(mx, expert[c]) : expert[c];
      summary[l].push_back(mx);
    }
  }
  std::string s = strprintf("<section class=\"expert-load\" data-run=\"%zu\"><h3><span class=\"swatch\" "
                            "style=\"background:%s\"></span>expert load of %s</h3><div class=\"heatmaps\">",
                            index, run_colour(index).c_str(), xml_escape(name).c_str());
  const Binned sb = bin_columns(load.steps, summary, kMaxHeatmapColumns);
  s += "<figure class=\"heatmap-figure\" data-kind=\"max-over-mean\">" +
       Heatmap("most loaded expert / mean, per MoE layer", "step", "MoE layer", sb.x, layer_labels, sb.values).svg() +
       "</figure>";
  for (size_t l = 0; l < L; ++l) {
    std::vector<std::string> experts;
    for (size_t e = 0; e < load.layers[l].size(); ++e) experts.push_back(strprintf("%zu", e));
    const Binned b = bin_columns(load.steps, load.layers[l], kMaxHeatmapColumns);
    s += strprintf("<figure class=\"heatmap-figure\" data-kind=\"experts\" data-layer=\"%zu\">", l) +
         Heatmap(layer_title(l) + ": each expert's load / uniform", "step", "expert", b.x, experts, b.values).svg() +
         "</figure>";
  }
  return s + "</div></section>";
}

constexpr const char* kStyle = R"(
body { font-family: Helvetica, Arial, sans-serif; color: #222; margin: 0 18px 24px; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 6px 0; z-index: 1; }
h1 { font-size: 20px; margin: 4px 0; } h2 { font-size: 16px; margin: 18px 0 6px; } h3 { font-size: 14px; margin: 12px 0 4px; }
.legend .run { margin-right: 18px; font-size: 13px; white-space: nowrap; }
.swatch { display: inline-block; width: 14px; height: 10px; margin-right: 5px; border-radius: 2px; vertical-align: baseline; }
.charts, .heatmaps { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 12px; margin: 4px 0 8px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
details.config { margin: 4px 0; font-size: 12px; }
pre { font-size: 11px; max-height: 420px; overflow: auto; background: #f7f7f7; padding: 6px; }
ul.notes { font-size: 12px; color: #555; }
.run-note { font-size: 12px; color: #8a4b00; }
@media (min-width: 1700px) { main { display: grid; grid-template-columns: minmax(0, 1fr) 520px; gap: 18px; }
  .runs { grid-column: 2; grid-row: 1 / span 3; } .runs table { display: block; overflow-x: auto; } }
)";
}  // namespace

std::string run_colour(size_t index) {
  static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return palette[index % 10];
}

std::vector<std::string> run_names(const std::vector<RunMetrics>& runs) {
  std::vector<std::string> names;
  for (const auto& r : runs) {
    std::filesystem::path p = std::filesystem::path(r.dir).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    names.push_back(p.filename().empty() ? r.dir : p.filename().string());
  }
  for (size_t i = 0; i < names.size(); ++i)
    if (std::count(names.begin(), names.end(), names[i]) > 1) names[i] = runs[i].dir;
  return names;
}

ExpertLoad expert_load_of(const RunMetrics& run) {
  ExpertLoad load;
  size_t L = 0, E = 0;  // the widest record
  for (const auto& r : run.steps) {
    const auto it = r.find("expert_load");
    if (it == r.end() || !it->is_array()) continue;
    L = std::max(L, it->size());
    for (const auto& layer : *it) E = std::max(E, layer.is_array() ? layer.size() : size_t(0));
  }
  if (L == 0 || E == 0) return load;
  load.layers.assign(L, std::vector<std::vector<double>>(E));
  for (const auto& r : run.steps) {
    load.steps.push_back(r["step"].get<double>());
    const auto it = r.find("expert_load");
    for (size_t l = 0; l < L; ++l)
      for (size_t e = 0; e < E; ++e) {
        double v = NAN;  // share x E: 1 = a uniform load
        if (it != r.end() && it->is_array() && l < it->size() && (*it)[l].is_array() && e < (*it)[l].size() &&
            (*it)[l][e].is_number())
          v = (*it)[l][e].get<double>() * static_cast<double>(E);
        load.layers[l][e].push_back(v);
      }
  }
  return load;
}

std::string report_html(const std::vector<RunMetrics>& runs) {
  const std::vector<std::string> names = run_names(runs);
  std::string title = "fivefold report:";
  for (const auto& n : names) title += " " + n;
  std::string charts, notes, moe;
  for (const MetricChart& m : kCharts) charts += metric_figure(m, runs, names, notes);
  for (size_t i = 0; i < runs.size(); ++i) {
    const ExpertLoad load = expert_load_of(runs[i]);
    if (!load.layers.empty()) moe += expert_load_section(load, names[i], i);
  }
  if (moe.empty()) notes += note("expert_load", "expert load: no run recorded expert_load (no MoE layer)");
  std::string s = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + xml_escape(title) +
                  "</title><style>" + kStyle + "</style></head><body>";
  s += "<header><h1>" + xml_escape(title) + "</h1>" + legend(names) + "</header><main>";
  s += "<section class=\"runs\"><h2>runs and parallel layouts</h2>" + layout_table(runs, names) + settings_table(runs, names) +
       run_details(runs, names) + "</section>";
  s += "<section class=\"metrics\"><h2>curves</h2><div class=\"charts\">" + charts + "</div>";
  if (!notes.empty()) s += "<ul class=\"notes\">" + notes + "</ul>";
  s += "</section>";
  if (!moe.empty())
    s += "<section class=\"moe\"><h2>expert load (share of each MoE layer's routed slots, over the global batch)</h2>" +
         load_colour_key() + moe + "</section>";
  return s + "</main></body></html>\n";
}

}  // namespace ff
