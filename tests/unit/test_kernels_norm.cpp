// RMSNorm and LayerNorm1p: forward against a double reference, backward against central finite
// differences of that reference (L = <w, y>), and the accumulate contract (dx, dw += ).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/cpu/norm.h"
#include "test_util.h"

namespace ff {
namespace {

using test::all_close;
using test::randn;
using Vec = std::vector<double>;

Vec to_d(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// Central difference of f with respect to x[i], all in double.
double fd(const std::function<double()>& f, double& xi, double h = 1e-5) {
  const double saved = xi;
  xi = saved + h;
  const double up = f();
  xi = saved - h;
  const double down = f();
  xi = saved;
  return (up - down) / (2 * h);
}

Vec rms_ref(const Vec& x, const Vec& w, double eps, int64_t N, int64_t D) {
  Vec y(x.size());
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[n * D + d] * x[n * D + d];
    const double r = 1.0 / std::sqrt(ss / D + eps);
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = x[n * D + d] * r * w[d];
  }
  return y;
}

Vec ln1p_ref(const Vec& x, const Vec& g, const Vec& b, double eps, int64_t N, int64_t D) {
  Vec y(x.size());
  for (int64_t n = 0; n < N; ++n) {
    double mu = 0, var = 0;
    for (int64_t d = 0; d < D; ++d) mu += x[n * D + d];
    mu /= D;
    for (int64_t d = 0; d < D; ++d) var += (x[n * D + d] - mu) * (x[n * D + d] - mu);
    const double r = 1.0 / std::sqrt(var / D + eps);
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = (x[n * D + d] - mu) * r * (1 + g[d]) + b[d];
  }
  return y;
}

double proj(const Vec& w, const Vec& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
  return s;
}

// Checks every entry of grad against the FD of f with respect to x (or `every`-th entry).
void expect_grad_fd(const std::vector<float>& grad, Vec& x, const std::function<double()>& f,
                    const char* what, size_t every = 1) {
  ASSERT_EQ(grad.size(), x.size());
  for (size_t i = 0; i < x.size(); i += every) {
    const double want = fd(f, x[i]);
    EXPECT_NEAR(grad[i], want, 2e-4 + 2e-3 * std::fabs(want)) << what << "[" << i << "]";
  }
}

TEST(RmsNorm, ForwardMatchesDoubleReference) {
  const int64_t N = 7, D = 13;
  const float eps = 1e-5f;
  auto x = randn(N * D, 1), w = randn(D, 2);
  std::vector<float> y(N * D), rstd(N);
  cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), eps, N, D);
  Vec ref = rms_ref(to_d(x), to_d(w), eps, N, D);
  EXPECT_TRUE(all_close(y, std::vector<float>(ref.begin(), ref.end()), 1e-6, 1e-5));
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += double(x[n * D + d]) * x[n * D + d];
    EXPECT_NEAR(rstd[n], 1.0 / std::sqrt(ss / D + eps), 1e-5 * rstd[n]);
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (int64_t D : {13, 131}) {  // 131 spans several column blocks of the dw reduction
    const int64_t N = 7;
    const float eps = 1e-5f;
    auto x = randn(N * D, 3), w = randn(D, 4), wp = randn(N * D, 5);
    std::vector<float> y(N * D), rstd(N);
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), eps, N, D);
    std::vector<float> dx(N * D, 0.0f), dw(D, 0.0f);
    cpu::rmsnorm_backward(dx.data(), dw.data(), wp.data(), x.data(), w.data(), rstd.data(), N, D);

    Vec xd = to_d(x), wd = to_d(w), wpd = to_d(wp);
    auto L = [&] { return proj(wpd, rms_ref(xd, wd, eps, N, D)); };
    expect_grad_fd(dx, xd, L, "dx", D > 100 ? 7 : 1);
    expect_grad_fd(dw, wd, L, "dw");

    // Accumulate: twice over a prefilled buffer gives prefill + 2 g, for dx and dw.
    auto px = randn(N * D, 6), pw = randn(D, 7);
    std::vector<float> dx2 = px, dw2 = pw;
    for (int rep = 0; rep < 2; ++rep)
      cpu::rmsnorm_backward(dx2.data(), dw2.data(), wp.data(), x.data(), w.data(), rstd.data(), N,
                            D);
    for (size_t i = 0; i < dx.size(); ++i) px[i] += 2 * dx[i];
    for (size_t i = 0; i < dw.size(); ++i) pw[i] += 2 * dw[i];
    EXPECT_TRUE(all_close(dx2, px, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(dw2, pw, 1e-5, 1e-5));
  }
}

TEST(LayerNorm1p, ForwardMatchesDoubleReference) {
  const int64_t N = 7, D = 13;
  const float eps = 1e-5f;
  auto x = randn(N * D, 11, 3.0f), g = randn(D, 12, 0.3f), b = randn(D, 13);
  for (auto& v : x) v += 5.0f;  // a non-zero mean to remove
  std::vector<float> y(N * D), mean(N), rstd(N);
  cpu::layernorm1p_forward(y.data(), mean.data(), rstd.data(), x.data(), g.data(), b.data(), eps,
                           N, D);
  Vec ref = ln1p_ref(to_d(x), to_d(g), to_d(b), eps, N, D);
  EXPECT_TRUE(all_close(y, std::vector<float>(ref.begin(), ref.end()), 1e-5, 1e-5));
  for (int64_t n = 0; n < N; ++n) {
    double mu = 0;
    for (int64_t d = 0; d < D; ++d) mu += x[n * D + d];
    EXPECT_NEAR(mean[n], mu / D, 1e-5);
  }
}

TEST(LayerNorm1p, ZeroGammaBetaIsPlainNormalisation) {
  // gamma is zero-centred: gamma = 0 means gain 1, so y = (x - mean) / sqrt(var + eps).
  const int64_t N = 5, D = 17;
  auto x = randn(N * D, 21, 2.0f);
  std::vector<float> g(D, 0.0f), b(D, 0.0f), y(N * D), mean(N), rstd(N);
  cpu::layernorm1p_forward(y.data(), mean.data(), rstd.data(), x.data(), g.data(), b.data(), 0.0f,
                           N, D);
  for (int64_t n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int64_t d = 0; d < D; ++d) m += y[n * D + d];
    for (int64_t d = 0; d < D; ++d) v += double(y[n * D + d]) * y[n * D + d];
    EXPECT_NEAR(m / D, 0.0, 1e-6);
    EXPECT_NEAR(v / D, 1.0, 1e-5);
  }
}

TEST(LayerNorm1p, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (int64_t D : {13, 131}) {
    const int64_t N = 7;
    const float eps = 1e-5f;
    auto x = randn(N * D, 31), g = randn(D, 32, 0.5f), b = randn(D, 33), wp = randn(N * D, 34);
    std::vector<float> y(N * D), mean(N), rstd(N);
    cpu::layernorm1p_forward(y.data(), mean.data(), rstd.data(), x.data(), g.data(), b.data(), eps,
                             N, D);
    std::vector<float> dx(N * D, 0.0f), dg(D, 0.0f), db(D, 0.0f);
    cpu::layernorm1p_backward(dx.data(), dg.data(), db.data(), wp.data(), x.data(), g.data(),
                              mean.data(), rstd.data(), N, D);

    Vec xd = to_d(x), gd = to_d(g), bd = to_d(b), wpd = to_d(wp);
    auto L = [&] { return proj(wpd, ln1p_ref(xd, gd, bd, eps, N, D)); };
    expect_grad_fd(dx, xd, L, "dx", D > 100 ? 7 : 1);
    expect_grad_fd(dg, gd, L, "dgamma");
    expect_grad_fd(db, bd, L, "dbeta");

    auto px = randn(N * D, 35), pg = randn(D, 36), pb = randn(D, 37);
    std::vector<float> dx2 = px, dg2 = pg, db2 = pb;
    for (int rep = 0; rep < 2; ++rep)
      cpu::layernorm1p_backward(dx2.data(), dg2.data(), db2.data(), wp.data(), x.data(), g.data(),
                                mean.data(), rstd.data(), N, D);
    for (size_t i = 0; i < dx.size(); ++i) px[i] += 2 * dx[i];
    for (int64_t i = 0; i < D; ++i) pg[i] += 2 * dg[i], pb[i] += 2 * db[i];
    EXPECT_TRUE(all_close(dx2, px, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(dg2, pg, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(db2, pb, 1e-5, 1e-5));
  }
}

}  // namespace
}  // namespace ff
