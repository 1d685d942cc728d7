// Progress and ETA for the commands a user waits on (preprocess, convert, eval, generate,
// upcycle, prune's calibration, checkpoint saves): one line on stderr, rewritten in place with
// '\r' at most once per interval (a few times per second), cleared when the work is done so that
// the command's own summary line follows. Logs stay clean: the caller decides whether to print
// (its lead rank, and stderr a terminal: stderr_is_terminal()); a Progress told not to print
// only counts. Nothing here is global: the clock and the output are options, so tests drive the
// arithmetic and the throttling with an injected clock and read what would have been written.
//
// The rate is the units done over the seconds since the Progress began; the ETA is the units
// left at that rate, as the trainer's log line computes its ETA from the mean step time.
// Not thread-safe: one thread advances a Progress.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace ff {

// Whether stderr is a terminal (then a progress line can be rewritten in place).
bool stderr_is_terminal();

// "0m05s", "12m40s", "3h07m": the format of the trainer's ETA.
std::string format_duration(double seconds);

enum class ProgressUnit : uint8_t {
  count,  // plain numbers with a name ("windows", "tokens", "tensors")
  bytes,  // shown as kB / MB / GB
};

struct ProgressOptions {
  bool print = false;                          // write the line at all (the caller's decision)
  double interval_s = 0.25;                    // at most one rewrite per interval, none before the first
  std::function<double()> clock;               // seconds, monotonic; empty = std::chrono::steady_clock
  std::function<void(const std::string&)> write;  // empty = fputs to stderr and fflush
};
// The defaults, printing when `on`.
inline ProgressOptions printing(bool on) {
  ProgressOptions o;
  o.print = on;
  return o;
}

class Progress {
 public:
  // what: the label ("eval", "checkpoint"); total: units expected (<= 0: unknown, no ETA or
  // percentage); unit_name: the name of a count unit ("windows"); ignored for bytes.
  Progress(std::string what, int64_t total, ProgressUnit unit, std::string unit_name, ProgressOptions options);
  ~Progress();  // finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // n more units done; rewrites the line when printing and an interval has passed since the
  // last rewrite (or since the start).
  void advance(int64_t n = 1);
  // Clears the line if one was written (once; later calls do nothing).
  void finish();

  int64_t done() const { return done_; }
  int64_t total() const { return total_; }
  double elapsed_s() const;
  double rate() const;   // units per second since the start; 0 before any time has passed
  double eta_s() const;  // seconds left at rate(); < 0 when unknown (no total, or no rate yet)
  std::string text() const;  // the line as it would be written now, without '\r'
  int64_t rewrites() const { return rewrites_; }

 private:
  double now() const;
  void emit(const std::string& s);

  std::string what_, unit_name_;
  int64_t total_ = 0, done_ = 0;
  ProgressUnit unit_;
  ProgressOptions opt_;
  double start_ = 0, last_write_ = 0;
  int64_t rewrites_ = 0;
  size_t width_ = 0;  // the longest line written, to blank what a shorter one leaves
  bool finished_ = false;
};

}  // namespace ff
