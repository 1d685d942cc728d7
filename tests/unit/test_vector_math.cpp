// The vectorised exponentials against std::exp: every tail length, -inf, aliasing, and the sum.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/vector_math.h"
#include "test_util.h"

namespace ff {
namespace {

TEST(VectorMath, ExpShiftedMatchesStdExpForEveryTailLength) {
  for (int64_t n : {0, 1, 7, 15, 16, 17, 31, 33, 100}) {
    std::vector<float> x = test::randn(static_cast<size_t>(n), 40 + n, 6.0f), y(x.size(), -1.0f);
    if (n > 3) x[3] = -INFINITY;  // a masked score
    cpu::exp_shifted(y.data(), x.data(), 1.5f, n);
    double want_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::exp(static_cast<double>(x[i]) - 1.5);
      want_sum += want;
      EXPECT_NEAR(y[i], want, 1e-6 * want) << "n " << n << " i " << i;
    }
    EXPECT_NEAR(cpu::sum_exp_shifted(x.data(), 1.5f, n), want_sum, 1e-6 * want_sum + 1e-30) << n;
    std::vector<float> z = x;  // in place
    cpu::exp_shifted(z.data(), z.data(), 1.5f, n);
    EXPECT_EQ(z, y);
  }
}

TEST(VectorMath, DoesNotWritePastTheEnd) {
  std::vector<float> x(40, 0.0f), y(40, 7.0f);
  cpu::exp_shifted(y.data(), x.data(), 0.0f, 21);
  for (int i = 0; i < 21; ++i) EXPECT_EQ(y[i], 1.0f);
  for (int i = 21; i < 40; ++i) EXPECT_EQ(y[i], 7.0f);
}

}  // namespace
}  // namespace ff
