#include "io/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/check.h"

namespace ff {

bool stderr_is_terminal() { return ::isatty(2) == 1; }

std::string format_duration(double s) {
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return strprintf("%lldh%02lldm", (long long)(t / 3600), (long long)(t % 3600 / 60));
  return strprintf("%lldm%02llds", (long long)(t / 60), (long long)(t % 60));
}

namespace {

std::string format_amount(double v, ProgressUnit unit, const std::string& name) {
  if (unit == ProgressUnit::bytes) {
    if (v >= 1e9) return strprintf("%.2f GB", v / 1e9);
    if (v >= 1e6) return strprintf("%.1f MB", v / 1e6);
    return strprintf("%.0f kB", v / 1e3);
  }
  return strprintf("%.0f %s", v, name.c_str());
}

std::string format_rate(double v, ProgressUnit unit, const std::string& name) {
  if (unit == ProgressUnit::bytes) return format_amount(v, unit, name) + "/s";
  return strprintf(v >= 100 ? "%.0f %s/s" : "%.1f %s/s", v, name.c_str());
}

}  // namespace

Progress::Progress(std::string what, int64_t total, ProgressUnit unit, std::string unit_name, ProgressOptions options)
    : what_(std::move(what)), unit_name_(std::move(unit_name)), total_(total), unit_(unit), opt_(std::move(options)) {
  start_ = last_write_ = now();
}

Progress::~Progress() { finish(); }

double Progress::now() const {
  if (opt_.clock) return opt_.clock();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double Progress::elapsed_s() const { return now() - start_; }

double Progress::rate() const {
  const double e = elapsed_s();
  return e > 0 ? static_cast<double>(done_) / e : 0.0;
}

double Progress::eta_s() const {
  const double r = rate();
  if (total_ <= 0 || r <= 0) return -1;
  const int64_t left = total_ > done_ ? total_ - done_ : 0;
  return static_cast<double>(left) / r;
}

std::string Progress::text() const {
  std::string s = what_ + ": ";
  if (unit_ == ProgressUnit::bytes) {
    s += format_amount(static_cast<double>(done_), unit_, unit_name_);
    if (total_ > 0) s += " of " + format_amount(static_cast<double>(total_), unit_, unit_name_);
  } else {
    s += total_ > 0 ? strprintf("%lld/%lld %s", (long long)done_, (long long)total_, unit_name_.c_str())
                    : strprintf("%lld %s", (long long)done_, unit_name_.c_str());
  }
  if (total_ > 0) s += strprintf(" (%.0f%%)", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
  const double r = rate();
  if (r > 0) s += " | " + format_rate(r, unit_, unit_name_);
  const double eta = eta_s();
  if (eta >= 0) s += " | ETA " + format_duration(eta);
  return s;
}

void Progress::emit(const std::string& s) {
  if (opt_.write) {
    opt_.write(s);
  } else {
    std::fputs(s.c_str(), stderr);
    std::fflush(stderr);
  }
}

void Progress::advance(int64_t n) {
  done_ += n;
  if (!opt_.print || finished_) return;
  const double t = now();
  if (t - last_write_ < opt_.interval_s) return;
  last_write_ = t;
  std::string line = text();
  const size_t len = line.size();
  if (len < width_) line.append(width_ - len, ' ');
  width_ = std::max(width_, len);
  emit("\r" + line);
  ++rewrites_;
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (opt_.print && rewrites_ > 0) emit("\r" + std::string(width_, ' ') + "\r");
}

}  // namespace ff
