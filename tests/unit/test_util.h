// Helpers shared by the unit tests: seeded random fills, tolerance checks that print where and
// by how much they fail, and a central finite difference in double precision.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace ff::test {

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed, "test");
  std::vector<float> v(n);
  for (auto& x : v) x = rng.normal() * scale;
  return v;
}

// |a - b| <= atol + rtol * |b| elementwise; on failure report the worst index and values.
inline ::testing::AssertionResult all_close(const float* a, const float* b, size_t n, double atol,
                                           double rtol) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    double err = std::fabs(double(a[i]) - double(b[i]));
    double budget = atol + rtol * std::fabs(double(b[i]));
    if (!(err <= budget) && (err / budget > worst || std::isnan(err))) {
      worst = std::isnan(err) ? INFINITY : err / budget;
      at = i;
    }
  }
  if (worst == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "mismatch at " << at << ": got " << a[at] << ", want "
                                       << b[at] << " (" << worst << "x the tolerance budget)";
}
inline ::testing::AssertionResult all_close(const std::vector<float>& a, const std::vector<float>& b,
                                           double atol, double rtol) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "size " << a.size() << " vs " << b.size();
  return all_close(a.data(), b.data(), a.size(), atol, rtol);
}

// Central difference of a scalar function f(x) with respect to x[i], evaluated in fp32 inputs but
// accumulated in double by f. Perturbs x in place and restores it.
inline double finite_difference(const std::function<double()>& f, float& xi, float h = 1e-2f) {
  float saved = xi;
  xi = saved + h;
  double up = f();
  xi = saved - h;
  double down = f();
  xi = saved;
  return (up - down) / (2.0 * double(h));
}

// An empty folder under the system's temporary directory, named fivefold_<name> (made anew).
inline std::string fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const std::string d = (fs::temp_directory_path() / ("fivefold_" + name)).string();
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Dot product in double, the usual projection for gradient checks: L = <w, y>.
inline double dot(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

}  // namespace ff::test
