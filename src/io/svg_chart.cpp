#include "io/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/check.h"

namespace ff {

namespace {
// Pixel coordinates with one decimal: enough on a screen, and short.
std::string px(double v) { return strprintf("%.1f", v); }

std::string text(const std::string& cls, double x, double y, const std::string& anchor, const std::string& body,
                 const std::string& extra = "") {
  return strprintf("<text class=\"%s\" x=\"%s\" y=\"%s\" text-anchor=\"%s\"%s>%s</text>", cls.c_str(), px(x).c_str(),
                   px(y).c_str(), anchor.c_str(), extra.c_str(), xml_escape(body).c_str());
}

std::string line(const std::string& cls, double x1, double y1, double x2, double y2, const std::string& stroke) {
  return strprintf("<line class=\"%s\" x1=\"%s\" y1=\"%s\" x2=\"%s\" y2=\"%s\" stroke=\"%s\"/>", cls.c_str(),
                   px(x1).c_str(), px(y1).c_str(), px(x2).c_str(), px(y2).c_str(), stroke.c_str());
}

std::string svg_open(const std::string& cls, int w, int h) {
  return strprintf("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"%s\" width=\"%d\" height=\"%d\" "
                   "viewBox=\"0 0 %d %d\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"11\">",
                   cls.c_str(), w, h, w, h);
}

std::string title_text(const std::string& title, double x) {
  return text("title", x, 18, "start", title, " font-size=\"13\" font-weight=\"bold\"");
}

// The axis labels: x centred under the plot, y turned along the left edge.
std::string axis_labels(const std::string& x_label, const std::string& y_label, double x_mid, double y_mid,
                        double bottom) {
  return text("label x", x_mid, bottom, "middle", x_label) +
         strprintf("<text class=\"label y\" transform=\"translate(13,%s) rotate(-90)\" text-anchor=\"middle\">%s"
                   "</text>", px(y_mid).c_str(), xml_escape(y_label).c_str());
}

// The x axis's ticks: marks below the axis line at y and their labels, for values mapped by `map`.
std::string x_ticks(const std::vector<double>& ticks, const AxisMap& map, double y) {
  std::string s = "<g class=\"ticks x\">";
  const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : 0;
  for (double t : ticks) {
    const double x = map(t);
    s += line("tick-mark", x, y, x, y + 4, "#444") + text("tick", x, y + 15, "middle", tick_text(t, step));
  }
  return s + "</g>";
}

std::vector<double> ticks_of(const AxisMap& m, bool integer) {
  return m.scale == Scale::log ? log_ticks(m.lo, m.hi) : linear_ticks(m.lo, m.hi, 6, integer);
}
}  // namespace

double tick_step(double lo, double hi, int target, bool integer) {
  double span = hi - lo;
  if (!(span > 0)) span = lo != 0 ? std::fabs(lo) : 1.0;
  const double raw = span / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;  // in [1, 10)
  const double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  return integer ? std::max(1.0, std::round(step)) : step;
}

std::vector<double> linear_ticks(double lo, double hi, int target, bool integer) {
  const double step = tick_step(lo, hi, target, integer);
  std::vector<double> out;
  // Multiples i * step (not a running sum, which drifts), with a little slack at the ends.
  const double first = std::ceil(lo / step - 1e-9), last = std::floor(hi / step + 1e-9);
  for (double i = first; i <= last; ++i) {
    const double v = i * step;
    out.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  return out;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> decades, all;
  const int first = static_cast<int>(std::ceil(std::log10(lo) - 1e-9)), last = static_cast<int>(std::floor(std::log10(hi) + 1e-9));
  for (int k = first; k <= last; ++k) decades.push_back(std::pow(10.0, k));
  if (decades.size() >= 3) return decades;
  for (int k = first - 1; k <= last; ++k)
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10.0, k);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) all.push_back(v);
    }
  return all;
}

std::string tick_text(double v, double step) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  const double scale = a >= 1e9 ? 1e9 : a >= 1e6 ? 1e6 : a >= 1e4 ? 1e3 : 1;
  const char* suffix = a >= 1e9 ? "G" : a >= 1e6 ? "M" : a >= 1e4 ? "k" : "";
  if (step <= 0) return strprintf("%.4g%s", v / scale, suffix);
  // Decimals down to the step's leading digit (steps are 1, 2 or 5 x 10^k).
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step / scale) + 1e-9)), 0, 12);
  return strprintf("%.*f%s", decimals, v / scale, suffix);
}

double AxisMap::operator()(double v) const {
  double t = 0.5;
  if (scale == Scale::log) {
    const double a = std::log10(lo), b = std::log10(hi);
    if (b > a) t = (std::log10(v) - a) / (b - a);
  } else if (hi > lo) {
    t = (v - lo) / (hi - lo);
  }
  return p0 + t * (p1 - p0);
}

bool plottable(double v, Scale s) { return std::isfinite(v) && (s == Scale::linear || v > 0); }

Extent axis_extent(const std::vector<double>& values, Scale s, bool integer, int target) {
  Extent e;
  for (double v : values) {
    if (!plottable(v, s)) continue;
    e.lo = e.found ? std::min(e.lo, v) : v;
    e.hi = e.found ? std::max(e.hi, v) : v;
    e.found = true;
  }
  if (!e.found) return e;
  if (s == Scale::log) {  // whole decades, at least one
    e.lo = std::pow(10.0, std::floor(std::log10(e.lo) + 1e-9));
    e.hi = std::pow(10.0, std::ceil(std::log10(e.hi) - 1e-9));
    if (e.hi <= e.lo) e.hi = e.lo * 10;
    return e;
  }
  if (e.hi == e.lo) {  // one value: an interval around it
    const double d = integer ? 1.0 : e.lo != 0 ? std::fabs(e.lo) * 0.1 : 1.0;
    e.lo -= d;
    e.hi += d;
  }
  const double step = tick_step(e.lo, e.hi, target, integer);
  e.lo = std::floor(e.lo / step + 1e-9) * step;
  e.hi = std::ceil(e.hi / step - 1e-9) * step;
  return e;
}

LineChart::LineChart(std::string title, std::string x_label, std::string y_label, Scale y_scale, ChartBox box)
    : title_(std::move(title)), x_label_(std::move(x_label)), y_label_(std::move(y_label)), y_scale_(y_scale),
      box_(box) {}

void LineChart::add(LineSeries s) {
  FF_CHECK(s.x.size() == s.y.size(), "chart '%s': series '%s' has %zu x and %zu y values", title_.c_str(),
           s.name.c_str(), s.x.size(), s.y.size());
  series_.push_back(std::move(s));
}

bool has_point(const LineSeries& s, Scale y_scale) {
  for (size_t i = 0; i < s.x.size(); ++i)
    if (plottable(s.x[i], Scale::linear) && plottable(s.y[i], y_scale)) return true;
  return false;
}

bool LineChart::has_data() const {
  return std::any_of(series_.begin(), series_.end(), [&](const LineSeries& s) { return has_point(s, y_scale_); });
}

AxisMap LineChart::x_map() const {
  std::vector<double> xs;
  for (const auto& s : series_)
    for (size_t i = 0; i < s.x.size(); ++i)
      if (plottable(s.y[i], y_scale_)) xs.push_back(s.x[i]);
  const Extent e = axis_extent(xs, Scale::linear, /*integer=*/true);
  return {e.lo, e.hi, static_cast<double>(box_.left), static_cast<double>(box_.width - box_.right), Scale::linear};
}

AxisMap LineChart::y_map() const {
  std::vector<double> ys;
  for (const auto& s : series_)
    for (size_t i = 0; i < s.x.size(); ++i)
      if (plottable(s.x[i], Scale::linear)) ys.push_back(s.y[i]);
  const Extent e = axis_extent(ys, y_scale_);
  return {e.lo, e.hi, static_cast<double>(box_.height - box_.bottom), static_cast<double>(box_.top), y_scale_};
}

std::string LineChart::series_path(const LineSeries& s, size_t index, const AxisMap& xm, const AxisMap& ym) const {
  std::string d, dots;
  size_t points = 0;
  for (size_t i = 0; i < s.x.size(); ++i) {
    if (!plottable(s.x[i], Scale::linear) || !plottable(s.y[i], y_scale_)) continue;
    const std::string x = px(xm(s.x[i])), y = px(ym(s.y[i]));
    d += (points++ == 0 ? "M" : "L") + x + "," + y;
    dots += strprintf("<circle class=\"marker\" cx=\"%s\" cy=\"%s\" r=\"2.5\" fill=\"%s\"/>", x.c_str(), y.c_str(),
                      s.colour.c_str());
  }
  if (points == 0) return "";
  if (points == 1) d += "l0,0";  // a lone point: a dot through the round line cap
  // Markers on sparse series (validation at intervals, short runs), where a line hides the points.
  const std::string markers = points <= 40 ? dots : "";
  return strprintf("<path class=\"series\" data-series=\"%zu\" d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" "
                   "stroke-linejoin=\"round\" stroke-linecap=\"round\"><title>%s</title></path>",
                   index, d.c_str(), s.colour.c_str(), points == 1 ? "5" : "1.6",
                   xml_escape(s.name).c_str()) + markers;
}

std::string LineChart::svg() const {
  if (!has_data()) return "";
  const AxisMap xm = x_map(), ym = y_map();
  const double left = box_.left, right = box_.width - box_.right, top = box_.top, bottom = box_.height - box_.bottom;
  std::string s = svg_open("line-chart", box_.width, box_.height) + title_text(title_, left);
  std::string yt = "<g class=\"ticks y\">";
  const std::vector<double> y_ticks = ticks_of(ym, false);
  // A linear axis's labels carry the digits its step needs; a log axis's are 1, 2 or 5 x 10^k.
  const double y_step = ym.scale == Scale::linear && y_ticks.size() > 1 ? y_ticks[1] - y_ticks[0] : 0;
  for (double t : y_ticks) {
    const double y = ym(t);
    s += line("grid", left, y, right, y, "#e6e6e6");
    yt += text("tick", left - 6, y + 4, "end", tick_text(t, y_step));
  }
  s += yt + "</g>" + x_ticks(ticks_of(xm, true), xm, bottom);
  s += line("axis x", left, bottom, right, bottom, "#444") + line("axis y", left, top, left, bottom, "#444");
  s += axis_labels(x_label_, y_label_, (left + right) / 2, (top + bottom) / 2, box_.height - 6);
  for (size_t i = 0; i < series_.size(); ++i) s += series_path(series_[i], i, xm, ym);
  return s + "</svg>";
}

int load_level(double relative) {
  if (!(relative > 0)) return 0;
  const double t = (std::clamp(std::log2(relative), -2.0, 2.0) + 2.0) / 4.0;  // 0 at 1/4, 1/2 at 1, 1 at 4
  return static_cast<int>(std::lround(t * (kLoadLevels - 1)));
}

std::string load_colour(int level) {
  const double t = (static_cast<double>(level) - (kLoadLevels - 1) / 2.0) / ((kLoadLevels - 1) / 2.0);  // -1 .. 1
  const double to[3] = {t < 0 ? 33.0 : 178.0, t < 0 ? 102.0 : 24.0, t < 0 ? 172.0 : 43.0};  // blue / red
  const double a = std::fabs(t);
  auto mix = [&](int c) { return static_cast<int>(std::lround(255.0 + a * (to[c] - 255.0))); };
  return strprintf("#%02x%02x%02x", mix(0), mix(1), mix(2));
}

Binned bin_columns(const std::vector<double>& x, const std::vector<std::vector<double>>& values, size_t max_columns) {
  const size_t C = x.size();
  if (C <= max_columns || max_columns == 0) return {x, values};
  Binned b;
  b.values.assign(values.size(), {});
  for (size_t k = 0; k < max_columns; ++k) {
    const size_t c0 = k * C / max_columns, c1 = (k + 1) * C / max_columns;  // columns [c0, c1)
    b.x.push_back(x[c1 - 1]);
    for (size_t r = 0; r < values.size(); ++r) {
      double sum = 0;
      int n = 0;
      for (size_t c = c0; c < c1; ++c)
        if (std::isfinite(values[r][c])) {
          sum += values[r][c];
          ++n;
        }
      b.values[r].push_back(n > 0 ? sum / n : NAN);
    }
  }
  return b;
}

Heatmap::Heatmap(std::string title, std::string x_label, std::string y_label, std::vector<double> x,
                 std::vector<std::string> row_labels, std::vector<std::vector<double>> values)
    : title_(std::move(title)), x_label_(std::move(x_label)), y_label_(std::move(y_label)), x_(std::move(x)),
      rows_(std::move(row_labels)), values_(std::move(values)) {
  FF_CHECK(values_.size() == rows_.size(), "heatmap '%s': %zu rows of values, %zu labels", title_.c_str(),
           values_.size(), rows_.size());
  for (const auto& r : values_)
    FF_CHECK(r.size() == x_.size(), "heatmap '%s': a row of %zu values for %zu columns", title_.c_str(), r.size(),
             x_.size());
}

std::string Heatmap::svg() const {
  const size_t R = rows_.size(), C = x_.size();
  if (R == 0 || C == 0) return "";
  const double rh = std::clamp(std::floor(160.0 / static_cast<double>(R)), 4.0, 16.0);
  const int left = 56, right = 12, top = 30, bottom = 44, width = 440;
  const int height = top + static_cast<int>(rh * static_cast<double>(R)) + bottom;
  const double cw = static_cast<double>(width - left - right) / static_cast<double>(C);
  // One path per colour level in cell units (the group scales them to pixels): each run of
  // neighbouring cells of a row with that level is one closed rectangle, "M c,r h n v1 h -n z".
  std::vector<std::string> level_paths(kLoadLevels);
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C;) {
      if (!std::isfinite(values_[r][c])) {
        ++c;
        continue;
      }
      const int level = load_level(values_[r][c]);
      size_t end = c + 1;
      while (end < C && std::isfinite(values_[r][end]) && load_level(values_[r][end]) == level) ++end;
      level_paths[static_cast<size_t>(level)] += strprintf("M%zu,%zuh%zuv1h-%zuz", c, r, end - c, end - c);
      c = end;
    }
  std::string s = svg_open("heatmap-chart", width, height) + title_text(title_, left);
  s += strprintf("<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%s\" fill=\"#ddd\"/>", left, top, width - left - right,
                 px(rh * static_cast<double>(R)).c_str());
  s += strprintf("<g class=\"heatmap\" data-rows=\"%zu\" data-cols=\"%zu\" shape-rendering=\"crispEdges\" "
                 "transform=\"translate(%d,%d) scale(%.6g,%.6g)\">", R, C, left, top, cw, rh);
  for (int l = 0; l < kLoadLevels; ++l)
    if (!level_paths[static_cast<size_t>(l)].empty())
      s += "<path d=\"" + level_paths[static_cast<size_t>(l)] + "\" fill=\"" + load_colour(l) + "\"/>";
  s += "</g>";
  const double bottom_y = top + rh * static_cast<double>(R);
  // Row labels, thinned to one per 10 pixels at least.
  const size_t every = static_cast<size_t>(std::ceil(10.0 / rh));
  s += "<g class=\"ticks y\">";
  for (size_t r = 0; r < R; r += every) s += text("tick", left - 5, top + rh * (r + 0.5) + 4, "end", rows_[r]);
  s += "</g>";
  // x: the columns' steps, from the first column's centre to the last's.
  AxisMap xm{x_.front(), x_.back(), left + cw / 2, left + cw * (static_cast<double>(C) - 0.5), Scale::linear};
  std::vector<double> ticks = linear_ticks(x_.front(), x_.back(), 5, true);
  if (C == 1) ticks = {x_.front()};
  s += x_ticks(ticks, xm, bottom_y);
  s += line("axis x", left, bottom_y, width - right, bottom_y, "#444") + line("axis y", left, top, left, bottom_y, "#444");
  s += axis_labels(x_label_, y_label_, (left + width - right) / 2.0, (top + bottom_y) / 2, height - 6);
  return s + "</svg>";
}

std::string load_colour_key() {
  const int cell = 18, left = 10, top = 6;
  std::string s = svg_open("colour-key", left * 2 + cell * kLoadLevels + 140, 40);
  for (int l = 0; l < kLoadLevels; ++l)
    s += strprintf("<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"12\" fill=\"%s\"/>", left + l * cell, top, cell,
                   load_colour(l).c_str());
  const char* labels[] = {"1/4", "1/2", "1", "2", "4"};
  for (int k = 0; k < 5; ++k)
    s += text("tick", left + (k * (kLoadLevels - 1) / 4 + 0.5) * cell, top + 26, "middle", labels[k]);
  s += text("label", left + cell * kLoadLevels + 8, top + 11, "start", "x uniform load (1/E)");
  return s + "</svg>";
}

std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace ff
