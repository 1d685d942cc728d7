// Activation-based importance for structured pruning (Minitron; specs/methods.md §3.5), from
// forward passes over calibration data only. For a hooked activation a[s, b, f] (position s of
// sequence b, channel f) each calibration batch adds
//     acc[f] += sum_b (mean_s |a[s, b, f]|)^2
// (fp64 here), and a channel's score is sqrt(acc[f]). Layers add their statistics from the
// records of their last forward (Mixer::add_importance); the decoder adds the pre-norm outputs
// (embedding channels) and each layer's 1 - cos(h_in, h_out) (depth). Entries of means (sum /
// count per channel) hold the MoE experts' mean output norm over the tokens routed to each.
// Every rank holds every entry of the whole model (sizes from the config), adds the channels and
// rows it holds, and finish() sums over the world: a rank's slice of the channels lands at its
// global offset, data-parallel replicas add their own data, and a replica of the same rows
// (TP ranks without sequence parallelism) does not add (`counted` false).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/tensor_parallel.h"
#include "parallel/comm.h"

namespace ff {

// Where a hooked activation's rows sit: B sequences of S positions, of which this CP rank's stream
// holds L = S / CP rows each (sequence after sequence); local row r is row row0 + r of that stream
// (row0 > 0 for a TP rank's share under sequence parallelism). The partial sums over positions
// are completed over `row_groups` (CP, and TP under sequence parallelism) before they are squared.
struct ImportanceRows {
  int64_t B = 0, S = 0, L = 0, row0 = 0, rows = 0;
  std::vector<const Communicator*> row_groups;
  int64_t sequence_of(int64_t r) const { return (row0 + r) / L; }
};

// Where a layer's activations come from, for its mixer's statistics: its name prefix, B sequences
// of S positions (L of each on this CP rank), the CP group (null: none) and the TP region.
struct ImportanceSite {
  std::string prefix;
  int64_t B = 0, S = 0, L = 0;
  const Communicator* cp = nullptr;
  TensorParallel tp;
};

class ImportanceStats {
 public:
  // An entry of `width` channels (global).
  void declare(const std::string& name, int64_t width);
  bool has(const std::string& name) const { return acc_.count(name) != 0; }
  // Adds the channels [offset, offset + cols) of entry `name` from columns [col0, col0 + cols) of
  // a [rows.rows, ld] activation (f32 or bf16). Collective over rows.row_groups even when not
  // counted; of each row group only its first rank adds the completed sums.
  void add(const std::string& name, int64_t offset, int64_t cols, const Tensor& a, int64_t col0, int64_t ld,
           const ImportanceRows& rows, bool counted);
  // Adds squares[i] (a sum of squared activations over samples of one position each) to channel
  // offset + i of entry `name`, i < n.
  void add_squares(const std::string& name, int64_t offset, int64_t n, const double* squares);
  // An entry's scalar sum and count (mean = sum / count) beside its channels: the depth score's
  // 1 - cos(h_in, h_out).
  void add_mean(const std::string& name, double sum, int64_t count);
  // An entry of `width` means, each sum / count (0 where the count is 0): the MoE experts'.
  void declare_means(const std::string& name, int64_t width);
  // Adds sums[i] and counts[i] to mean offset + i of entry `name`, i < n (this rank's own share;
  // finish() sums the ranks).
  void add_means(const std::string& name, int64_t offset, int64_t n, const double* sums, const double* counts);
  // Sums every entry over the world (all ranks, same declarations) and counts a batch.
  void finish(const Communicator& world);
  void end_batch() { ++batches_; }

  // sqrt(acc) per channel of an entry; the mean of a scalar entry.
  std::vector<double> scores(const std::string& name) const;
  double mean(const std::string& name) const;
  std::vector<double> means(const std::string& name) const;
  int64_t batches() const { return batches_; }
  const std::map<std::string, std::vector<double>>& raw() const { return acc_; }
  struct Means {
    std::vector<double> sum, count;
  };
  const std::map<std::string, Means>& raw_means() const { return channel_means_; }

 private:
  std::map<std::string, std::vector<double>> acc_;
  std::map<std::string, std::pair<double, double>> means_;  // sum, count
  std::map<std::string, Means> channel_means_;
  int64_t batches_ = 0;
};

// The statistic of one batch for a [S, B, F] activation as written in §3.5, on one process:
// the test's hand-computed reference. a is indexed a[(b S + s) F + f].
std::vector<double> importance_of_batch(const std::vector<float>& a, int64_t B, int64_t S, int64_t F);

}  // namespace ff
