#include "layers/importance.h"

#include <cmath>

#include "core/bf16.h"
#include "core/check.h"

namespace ff {

void ImportanceStats::declare(const std::string& name, int64_t width) {
  acc_[name].assign(static_cast<size_t>(width), 0.0);
  means_[name] = {0.0, 0.0};  // every rank holds every mean too, for finish()'s sums
}

void ImportanceStats::add(const std::string& name, int64_t offset, int64_t cols, const Tensor& a, int64_t col0,
                          int64_t ld, const ImportanceRows& rows, bool counted) {
  auto it = acc_.find(name);
  FF_CHECK(it != acc_.end() && offset + cols <= static_cast<int64_t>(it->second.size()),
           "importance entry '%s' is not declared for channels [%lld, %lld)", name.c_str(), (long long)offset,
           (long long)(offset + cols));
  // sum_s |a| per (sequence, channel), over the rows held here, then over the row groups.
  std::vector<double> partial(static_cast<size_t>(rows.B * cols), 0.0);
  const bool bf16 = a.dtype == DType::bf16;
  for (int64_t r = 0; r < rows.rows; ++r) {
    double* p = partial.data() + rows.sequence_of(r) * cols;
    for (int64_t f = 0; f < cols; ++f) {
      const int64_t i = r * ld + col0 + f;
      const float v = bf16 ? bf16_to_float(a.bf16()[i]) : a.f32()[i];
      p[f] += std::fabs(static_cast<double>(v));
    }
  }
  // After the sums over a row group every member holds them: its first rank adds them.
  for (const Communicator* g : rows.row_groups)
    if (g && g->size() > 1) {
      g->all_reduce_sum(partial.data(), static_cast<int64_t>(partial.size()));
      counted = counted && g->rank() == 0;
    }
  if (!counted) return;
  std::vector<double>& acc = it->second;
  const double inv_s = 1.0 / static_cast<double>(rows.S);
  for (int64_t b = 0; b < rows.B; ++b)
    for (int64_t f = 0; f < cols; ++f) {
      const double m = partial[static_cast<size_t>(b * cols + f)] * inv_s;
      acc[static_cast<size_t>(offset + f)] += m * m;
    }
}

void ImportanceStats::add_squares(const std::string& name, int64_t offset, int64_t n, const double* squares) {
  auto it = acc_.find(name);
  FF_CHECK(it != acc_.end() && offset >= 0 && offset + n <= static_cast<int64_t>(it->second.size()),
           "importance entry '%s' is not declared for channels [%lld, %lld)", name.c_str(), (long long)offset,
           (long long)(offset + n));
  for (int64_t i = 0; i < n; ++i) it->second[static_cast<size_t>(offset + i)] += squares[i];
}

void ImportanceStats::add_mean(const std::string& name, double sum, int64_t count) {
  auto it = means_.find(name);
  FF_CHECK(it != means_.end(), "importance entry '%s' is not declared", name.c_str());
  auto& m = it->second;
  m.first += sum;
  m.second += static_cast<double>(count);
}

void ImportanceStats::declare_means(const std::string& name, int64_t width) {
  channel_means_[name] = {std::vector<double>(static_cast<size_t>(width), 0.0),
                          std::vector<double>(static_cast<size_t>(width), 0.0)};
}

void ImportanceStats::add_means(const std::string& name, int64_t offset, int64_t n, const double* sums,
                                const double* counts) {
  auto it = channel_means_.find(name);
  FF_CHECK(it != channel_means_.end() && offset >= 0 && offset + n <= static_cast<int64_t>(it->second.sum.size()),
           "importance means '%s' are not declared for [%lld, %lld)", name.c_str(), (long long)offset,
           (long long)(offset + n));
  for (int64_t i = 0; i < n; ++i) {
    it->second.sum[static_cast<size_t>(offset + i)] += sums[i];
    it->second.count[static_cast<size_t>(offset + i)] += counts[i];
  }
}

void ImportanceStats::finish(const Communicator& world) {
  for (auto& [name, v] : acc_) world.all_reduce_sum(v.data(), static_cast<int64_t>(v.size()));
  for (auto& [name, m] : channel_means_) {
    world.all_reduce_sum(m.sum.data(), static_cast<int64_t>(m.sum.size()));
    world.all_reduce_sum(m.count.data(), static_cast<int64_t>(m.count.size()));
  }
  for (auto& [name, m] : means_) {
    double both[2] = {m.first, m.second};
    world.all_reduce_sum(both, 2);
    m = {both[0], both[1]};
  }
}

std::vector<double> ImportanceStats::scores(const std::string& name) const {
  auto it = acc_.find(name);
  FF_CHECK(it != acc_.end(), "no importance entry '%s'", name.c_str());
  std::vector<double> s(it->second.size());
  for (size_t i = 0; i < s.size(); ++i) s[i] = std::sqrt(it->second[i]);
  return s;
}

double ImportanceStats::mean(const std::string& name) const {
  auto it = means_.find(name);
  FF_CHECK(it != means_.end() && it->second.second > 0, "no importance mean '%s' (no batch added to it)", name.c_str());
  return it->second.first / it->second.second;
}

std::vector<double> ImportanceStats::means(const std::string& name) const {
  auto it = channel_means_.find(name);
  FF_CHECK(it != channel_means_.end(), "no importance means '%s'", name.c_str());
  std::vector<double> m(it->second.sum.size(), 0.0);
  for (size_t i = 0; i < m.size(); ++i)
    if (it->second.count[i] > 0) m[i] = it->second.sum[i] / it->second.count[i];
  return m;
}

std::vector<double> importance_of_batch(const std::vector<float>& a, int64_t B, int64_t S, int64_t F) {
  std::vector<double> acc(static_cast<size_t>(F), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < F; ++f) {
      double m = 0;
      for (int64_t s = 0; s < S; ++s) m += std::fabs(static_cast<double>(a[static_cast<size_t>((b * S + s) * F + f)]));
      m /= static_cast<double>(S);
      acc[static_cast<size_t>(f)] += m * m;
    }
  return acc;
}

}  // namespace ff
