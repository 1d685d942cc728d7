// The report's SVG charts (io/svg_chart.h) and its reader of run folders (io/run_metrics.h): tick
// placement, data-to-pixel mapping of known points, unplottable values skipped, a one-point
// series, heatmap colours and binning; metrics.jsonl's incomplete last line, a malformed line and
// a missing file.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "cli/report_page.h"
#include "core/check.h"
#include "io/run_metrics.h"
#include "io/svg_chart.h"
#include "test_util.h"

namespace ff {
namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

// The d attribute of the first series path.
std::string series_d(const std::string& svg) {
  const size_t at = svg.find("class=\"series\"");
  const size_t d = svg.find(" d=\"", at) + 4;
  return svg.substr(d, svg.find('"', d) - d);
}

// Ticks are i x step in double: equal to the decimal values to a few ulps.
void expect_ticks(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << i;
}

TEST(SvgChart, LinearTicksAreMultiplesOfOneTwoOrFive) {
  expect_ticks(linear_ticks(0, 1, 5), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  EXPECT_DOUBLE_EQ(tick_step(0, 10, 5), 2);
  EXPECT_DOUBLE_EQ(tick_step(0, 300, 6), 50);
  // 3.9 / 6 = 0.65 per tick rounds to 0.5; 3.9 / 4 = 0.975 to 1.
  expect_ticks(linear_ticks(3.8, 7.7, 6), {4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5});
  expect_ticks(linear_ticks(3.8, 7.7, 4), {4, 5, 6, 7});
  // Steps: never a fraction apart.
  expect_ticks(linear_ticks(1, 3, 6, true), {1, 2, 3});
  // i x step, not a running sum: 0.1 x 3 prints as 0.3.
  const auto t = linear_ticks(0, 0.5, 5);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_EQ(tick_text(t[3]), "0.3");
  EXPECT_EQ(t[0], 0.0);
}

TEST(SvgChart, LogTicksAreDecadesOrOneTwoFive) {
  EXPECT_EQ(log_ticks(1e-4, 1e-1).size(), 4u);
  EXPECT_DOUBLE_EQ(log_ticks(1e-4, 1e-1)[1], 1e-3);
  EXPECT_EQ(log_ticks(1, 10), (std::vector<double>{1, 2, 5, 10}));
}

TEST(SvgChart, TickTextIsShort) {
  EXPECT_EQ(tick_text(0), "0");
  EXPECT_EQ(tick_text(1500), "1500");
  EXPECT_EQ(tick_text(25000), "25k");
  EXPECT_EQ(tick_text(2e6), "2M");
  EXPECT_EQ(tick_text(0.25), "0.25");
  EXPECT_EQ(tick_text(3e-5), "3e-05");
  // With the step: as many digits as tell neighbouring ticks apart.
  EXPECT_EQ(tick_text(272.72, 0.02), "272.72");
  EXPECT_EQ(tick_text(12500, 500), "12.5k");
  EXPECT_EQ(tick_text(0.3, 0.1), "0.3");
  EXPECT_EQ(tick_text(7, 1), "7");
}

TEST(SvgChart, KnownPointsMapToTheirPixels) {
  ChartBox box;  // 560 x 280, plot area x 64 .. 542, y 236 (bottom) .. 30 (top)
  LineChart c("t", "step", "v", Scale::linear, box);
  c.add({"a", "#000", {0, 10}, {0, 1}});
  const AxisMap x = c.x_map(), y = c.y_map();
  EXPECT_DOUBLE_EQ(x.lo, 0);
  EXPECT_DOUBLE_EQ(x.hi, 10);
  EXPECT_DOUBLE_EQ(x(5), 64 + 0.5 * (542 - 64));
  EXPECT_DOUBLE_EQ(y(0.5), 236 + 0.5 * (30 - 236));
  EXPECT_EQ(series_d(c.svg()), "M64.0,236.0L542.0,30.0");
  // A log axis: one decade is a third of three.
  AxisMap l{1e-3, 1, 300, 0, Scale::log};
  EXPECT_NEAR(l(1e-2), 200, 1e-9);
}

TEST(SvgChart, UnplottableValuesAreSkipped) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  LineChart c("t", "step", "v");
  c.add({"a", "#000", {1, 2, 3, 4}, {1, nan, inf, 2}});
  const std::string svg = c.svg();
  const std::string d = series_d(svg);
  EXPECT_EQ(count(d, "M"), 1u);
  EXPECT_EQ(count(d, "L"), 1u);  // two points: steps 1 and 4
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_DOUBLE_EQ(c.y_map().lo, 1);
  EXPECT_DOUBLE_EQ(c.y_map().hi, 2);
  // On a log axis zero and negative values are not drawn either.
  LineChart lg("t", "step", "v", Scale::log);
  lg.add({"a", "#000", {1, 2, 3}, {0, -1, 0.5}});
  EXPECT_EQ(count(series_d(lg.svg()), "L"), 0u);
  EXPECT_DOUBLE_EQ(lg.y_map().lo, 0.1);
  EXPECT_DOUBLE_EQ(lg.y_map().hi, 1);
  // No drawable point at all: no chart.
  LineChart none("t", "step", "v", Scale::log);
  none.add({"a", "#000", {1}, {0}});
  EXPECT_FALSE(none.has_data());
  EXPECT_EQ(none.svg(), "");
}

TEST(SvgChart, OnePointSeriesIsADotInTheMiddle) {
  LineChart c("t", "step", "v");
  c.add({"a", "#000", {7}, {3.5}});
  ASSERT_TRUE(c.has_data());
  const AxisMap x = c.x_map(), y = c.y_map();
  EXPECT_LT(x.lo, 7);
  EXPECT_GT(x.hi, 7);
  EXPECT_NEAR(x(7), (x.p0 + x.p1) / 2, 1e-9);
  EXPECT_NEAR(y(3.5), (y.p0 + y.p1) / 2, 1e-9);
  const std::string svg = c.svg();
  EXPECT_NE(series_d(svg).find("l0,0"), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"series\""), 1u);
  EXPECT_EQ(count(svg, "class=\"axis x\""), 1u);
  EXPECT_EQ(count(svg, "class=\"axis y\""), 1u);
  EXPECT_GE(count(svg, "class=\"tick\""), 2u);
}

TEST(SvgChart, OnePathPerSeriesWithItsIndex) {
  LineChart c("t", "step", "v");
  c.add({"a", "#111", {1, 2}, {1, 2}});
  c.add({"b", "#222", {1, 2, 3}, {2, 1, 3}});
  const std::string svg = c.svg();
  EXPECT_EQ(count(svg, "class=\"series\""), 2u);
  EXPECT_NE(svg.find("data-series=\"1\""), std::string::npos);
  EXPECT_NE(svg.find("<title>b</title>"), std::string::npos);
}

TEST(SvgChart, LoadColoursAreCentredOnUniform) {
  EXPECT_EQ(load_level(1.0), kLoadLevels / 2);
  EXPECT_EQ(load_level(4.0), kLoadLevels - 1);
  EXPECT_EQ(load_level(100.0), kLoadLevels - 1);
  EXPECT_EQ(load_level(0.25), 0);
  EXPECT_EQ(load_level(0.0), 0);
  EXPECT_EQ(load_colour(kLoadLevels / 2), "#ffffff");
  EXPECT_EQ(load_colour(kLoadLevels - 1), "#b2182b");
}

TEST(SvgChart, ColumnsAreBinnedByMean) {
  const Binned b = bin_columns({1, 2, 3, 4, 5}, {{1, 3, 2, 4, NAN}}, 2);
  EXPECT_EQ(b.x, (std::vector<double>{2, 5}));
  ASSERT_EQ(b.values[0].size(), 2u);
  EXPECT_DOUBLE_EQ(b.values[0][0], 2);  // (1 + 3) / 2
  EXPECT_DOUBLE_EQ(b.values[0][1], 3);  // (2 + 4) / 2, the NaN left out
  const Binned same = bin_columns({1, 2}, {{1, 2}}, 200);
  EXPECT_EQ(same.x.size(), 2u);
}

TEST(SvgChart, HeatmapHasItsCellsAndAxes) {
  Heatmap h("h", "step", "expert", {1, 2, 3}, {"0", "1"}, {{1, 2, NAN}, {1, 0.5, 1}});
  const std::string svg = h.svg();
  EXPECT_NE(svg.find("class=\"heatmap\" data-rows=\"2\" data-cols=\"3\""), std::string::npos);
  EXPECT_EQ(count(svg, "h-"), 5u);  // five cells with a value, each a closed subpath back to its left edge
  EXPECT_EQ(count(svg, "class=\"axis x\""), 1u);
  EXPECT_EQ(count(svg, "class=\"axis y\""), 1u);
}

TEST(SvgChart, TextIsEscaped) { EXPECT_EQ(xml_escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;"); }

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(RunMetrics, IncompleteLastLineIsLeftOutAndRepeatsReplaced) {
  const std::string d = test::fresh_dir("report_reader");
  write(d + "/metrics.jsonl", "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 2, \"loss\": 1.5}\n"
                              "{\"step\": 2, \"loss\": 1.25}\n{\"step\": 3, \"lo");
  const RunMetrics r = read_run(d);
  EXPECT_TRUE(r.incomplete_tail);
  EXPECT_EQ(r.replaced_steps, 1);
  const StepSeries s = metric_series(r, "loss");
  EXPECT_EQ(s.step, (std::vector<double>{1, 2}));
  EXPECT_EQ(s.value, (std::vector<double>{2.0, 1.25}));
  EXPECT_TRUE(r.config.is_null());
}

TEST(RunMetrics, BadInputNamesTheFile) {
  const std::string d = test::fresh_dir("report_bad");
  try {
    read_run(d);
    ADD_FAILURE() << "read a folder without metrics.jsonl";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(d + "/metrics.jsonl"), std::string::npos) << e.what();
  }
  write(d + "/metrics.jsonl", "{\"step\": 1}\nnot json\n{\"step\": 3}\n");
  try {
    read_run(d);
    ADD_FAILURE() << "read a malformed line";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl line 2"), std::string::npos) << e.what();
  }
}

TEST(RunMetrics, ExpertLoadIsShareTimesExperts) {
  const std::string d = test::fresh_dir("report_load");
  write(d + "/metrics.jsonl", "{\"step\": 1, \"expert_load\": [[0.5, 0.25, 0.25, 0.0]]}\n{\"step\": 2}\n");
  const ExpertLoad load = expert_load_of(read_run(d));
  ASSERT_EQ(load.layers.size(), 1u);
  ASSERT_EQ(load.layers[0].size(), 4u);
  EXPECT_DOUBLE_EQ(load.layers[0][0][0], 2.0);
  EXPECT_DOUBLE_EQ(load.layers[0][3][0], 0.0);
  EXPECT_TRUE(std::isnan(load.layers[0][0][1]));  // step 2 has no record of it
}

}  // namespace
}  // namespace ff
