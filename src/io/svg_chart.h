// Charts as SVG text, drawn here so that a report needs nothing from outside: a line chart of
// several series over a shared x axis (linear, or a log y axis), and a heatmap of a matrix of
// loads relative to uniform. Presentation lives in attributes, so each <svg> stands alone.
// The elements a reader (or a test) counts carry classes: the axis lines "axis x" / "axis y",
// tick labels "tick", one path "series" per drawn series (data-series = its index in add order),
// and a heatmap's <g class="heatmap" data-rows data-cols> holding one path per colour level.
#pragma once
#include <string>
#include <vector>

namespace ff {

enum class Scale { linear, log };

// Tick values inside [lo, hi]: the multiples of a step of 1, 2 or 5 x 10^k that give about
// `target` ticks (at least 1 apart when `integer`, for steps). lo <= hi.
std::vector<double> linear_ticks(double lo, double hi, int target, bool integer = false);
// The step linear_ticks uses.
double tick_step(double lo, double hi, int target, bool integer = false);
// Powers of ten inside [lo, hi] (0 < lo <= hi); with fewer than three, 1, 2 and 5 x 10^k as well.
std::vector<double> log_ticks(double lo, double hi);
// A tick's text, short: "0.25", "120", "1.5k", "2M", "3e-05"; with the axis's tick step, the
// digits down to the step's ("272.72" at a step of 0.02), otherwise four significant digits.
std::string tick_text(double v, double step = 0);

// The data interval [lo, hi] onto the pixels [p0, p1] (for y, p0 is the bottom: p1 < p0).
struct AxisMap {
  double lo = 0, hi = 1;
  double p0 = 0, p1 = 1;
  Scale scale = Scale::linear;
  double operator()(double v) const;
};

// Whether a value can be drawn on an axis of this scale: finite, and positive on a log axis.
bool plottable(double v, Scale s);

// The drawn interval of values (the plottable ones): widened to whole tick steps (linear) or
// whole decades (log); a single value gets an interval around it. found = false without any.
struct Extent {
  double lo = 0, hi = 1;
  bool found = false;
};
Extent axis_extent(const std::vector<double>& values, Scale s, bool integer = false, int target = 6);

struct LineSeries {
  std::string name;    // the run's name: the path's <title> (a hover tooltip)
  std::string colour;  // a CSS colour
  std::vector<double> x, y;  // the same length; a point with an unplottable coordinate is skipped
};

// Whether a series has a point to draw on a y axis of this scale.
bool has_point(const LineSeries& s, Scale y_scale);

struct ChartBox {
  int width = 560, height = 280;
  int left = 64, right = 18, top = 30, bottom = 44;  // margins around the plot area
};

class LineChart {
 public:
  LineChart(std::string title, std::string x_label, std::string y_label, Scale y_scale = Scale::linear,
            ChartBox box = {});
  void add(LineSeries s);
  bool has_data() const;  // any plottable point in any series
  // Data to pixels, over every series added so far (x: steps, whole-number ticks).
  AxisMap x_map() const;
  AxisMap y_map() const;
  // The <svg> element. Series without a plottable point are left out.
  std::string svg() const;

 private:
  std::string title_, x_label_, y_label_;
  Scale y_scale_;
  ChartBox box_;
  std::vector<LineSeries> series_;
  std::string series_path(const LineSeries& s, size_t index, const AxisMap& xm, const AxisMap& ym) const;
};

// The colour of a load relative to uniform (1 = the expert got 1/E of the slots): a diverging
// scale in log2, blue below 1, white at 1, red above, saturated at 1/4 and 4.
int load_level(double relative);  // 0 .. kLoadLevels - 1; kLoadLevels / 2 is 1
constexpr int kLoadLevels = 17;
std::string load_colour(int level);

// Columns averaged in consecutive bins so that at most max_columns remain: [rows][columns] values
// and the columns' x; a bin's x is its last column's. Non-finite values are left out of a mean.
struct Binned {
  std::vector<double> x;
  std::vector<std::vector<double>> values;
};
Binned bin_columns(const std::vector<double>& x, const std::vector<std::vector<double>>& values, size_t max_columns);

class Heatmap {
 public:
  // values[r][c]: row r (drawn top to bottom, labelled row_labels[r]) at column x[c] (steps).
  Heatmap(std::string title, std::string x_label, std::string y_label, std::vector<double> x,
          std::vector<std::string> row_labels, std::vector<std::vector<double>> values);
  std::string svg() const;

 private:
  std::string title_, x_label_, y_label_;
  std::vector<double> x_;
  std::vector<std::string> rows_;
  std::vector<std::vector<double>> values_;
};

// The heatmap's colour key: the levels from 1/4 to 4 x uniform, labelled.
std::string load_colour_key();

// Text for XML character data and attribute values.
std::string xml_escape(const std::string& s);

}  // namespace ff
