// Embedding, RoPE, MLP activations, softmax cross-entropy, AdamW and GEMM/linear: forward
// against double references, backward against central finite differences (L = <w, y>), the
// accumulate / overwrite contracts, and clear errors for bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/softmax_ce.h"
#include "test_util.h"

namespace ff {
namespace {

using test::all_close;
using test::randn;
using Vec = std::vector<double>;

// Central difference in double of f with respect to xi.
double fd(const std::function<double()>& f, double& xi, double h = 1e-5) {
  const double saved = xi;
  xi = saved + h;
  const double up = f();
  xi = saved - h;
  const double down = f();
  xi = saved;
  return (up - down) / (2 * h);
}

void expect_grad_fd(const std::vector<float>& grad, Vec& x, const std::function<double()>& f,
                    const char* what) {
  ASSERT_EQ(grad.size(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = fd(f, x[i]);
    EXPECT_NEAR(grad[i], want, 2e-4 + 2e-3 * std::fabs(want)) << what << "[" << i << "]";
  }
}

// Runs f, expects ff::Error whose message contains every one of `needles`.
void expect_error(const std::function<void()>& f, std::initializer_list<const char*> needles) {
  try {
    f();
    ADD_FAILURE() << "expected ff::Error";
  } catch (const Error& e) {
    for (const char* n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message lacks '" << n << "': " << e.what();
  }
}

// ----------------------------------------------------------------------------------- embedding

TEST(Embedding, ForwardGathersRows) {
  const int64_t V = 11, D = 130, N = 6;  // D spans several column blocks of the backward
  auto table = randn(V * D, 1);
  std::vector<int32_t> tok = {3, 0, 10, 3, 7, 3};
  std::vector<float> out(N * D);
  cpu::embedding_forward(out.data(), tok.data(), table.data(), N, D, V);
  for (int64_t n = 0; n < N; ++n)
    EXPECT_TRUE(all_close(out.data() + n * D, table.data() + tok[n] * D, D, 0, 0)) << n;
}

TEST(Embedding, BackwardAccumulatesRepeatedTokens) {
  const int64_t V = 11, D = 130, N = 6;
  std::vector<int32_t> tok = {3, 0, 10, 3, 7, 3};
  auto dout = randn(N * D, 2), pre = randn(V * D, 3);
  std::vector<float> dt = pre;
  for (int rep = 0; rep < 2; ++rep)
    cpu::embedding_backward(dt.data(), dout.data(), tok.data(), N, D, V);
  std::vector<float> want = pre;
  for (int rep = 0; rep < 2; ++rep)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d) want[tok[n] * D + d] += dout[n * D + d];
  EXPECT_TRUE(all_close(dt, want, 1e-6, 1e-6));
  // Rows no token touched keep their prefill exactly.
  EXPECT_TRUE(all_close(dt.data() + 1 * D, pre.data() + 1 * D, D, 0, 0));
}

TEST(Embedding, OutOfRangeTokenThrows) {
  const int64_t V = 5, D = 4;
  auto table = randn(V * D, 1);
  std::vector<float> out(3 * D);
  std::vector<int32_t> bad = {1, 9, 2};
  expect_error([&] { cpu::embedding_forward(out.data(), bad.data(), table.data(), 3, D, V); },
               {"token id 9", "row 1", "[0, 5)"});
  std::vector<int32_t> neg = {-1, 0, 0};
  expect_error([&] { cpu::embedding_backward(table.data(), out.data(), neg.data(), 3, D, V); },
               {"token id -1", "row 0"});
}

// ---------------------------------------------------------------------------------------- rope

// Double reference of the rotate-half rotation with the spec's theta.
Vec rope_ref(const Vec& x, const std::vector<int32_t>& pos, int64_t N, int64_t H, int64_t dh,
             int64_t ld, int64_t rot, double base) {
  Vec y = x;
  const int64_t half = rot / 2;
  for (int64_t r = 0; r < N; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double th = pos[r] * std::pow(base, -2.0 * i / rot);
        const double a = x[r * ld + h * dh + i], b = x[r * ld + h * dh + i + half];
        y[r * ld + h * dh + i] = a * std::cos(th) - b * std::sin(th);
        y[r * ld + h * dh + i + half] = b * std::cos(th) + a * std::sin(th);
      }
  return y;
}

TEST(Rope, ForwardMatchesReferenceFullAndPartial) {
  const int64_t N = 5, H = 3, dh = 12, ld = H * dh + 3;  // padded stride: pad must be untouched
  const double base = 10000.0;
  std::vector<int32_t> pos = {0, 1, 7, 30, 2};
  for (double pct : {1.0, 0.5}) {
    SCOPED_TRACE(pct);
    const int64_t rot = static_cast<int64_t>(pct * dh);
    auto tab = cpu::rope_table(32, rot, base);
    auto x = randn(N * ld, 4);
    auto y = x;
    cpu::rope_forward(y.data(), pos.data(), tab, N, H, dh, ld);
    Vec ref = rope_ref(Vec(x.begin(), x.end()), pos, N, H, dh, ld, rot, base);
    EXPECT_TRUE(all_close(y, std::vector<float>(ref.begin(), ref.end()), 1e-5, 1e-5));
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t c = H * dh; c < ld; ++c) EXPECT_EQ(y[r * ld + c], x[r * ld + c]) << "pad";
      for (int64_t h = 0; h < H; ++h) {
        double n0 = 0, n1 = 0;
        for (int64_t d = 0; d < dh; ++d) {
          const int64_t i = r * ld + h * dh + d;
          n0 += double(x[i]) * x[i];
          n1 += double(y[i]) * y[i];
          if (d >= rot) {
            EXPECT_EQ(y[i], x[i]) << "dim " << d << " beyond rot_dim changed";
          }
          if (pos[r] == 0) {
            EXPECT_EQ(y[i], x[i]) << "position 0 must be the identity";
          }
        }
        EXPECT_NEAR(n1, n0, 1e-5 * n0) << "rotation must preserve the norm";
      }
    }
  }
}

TEST(Rope, BackwardIsTheTransposeAndInvertsForward) {
  const int64_t N = 4, H = 2, dh = 10, ld = H * dh, rot = 10;
  std::vector<int32_t> pos = {3, 0, 15, 9};
  auto tab = cpu::rope_table(16, rot, 500.0);
  auto x = randn(N * ld, 5), w = randn(N * ld, 6);
  // backward(forward(x)) == x
  auto y = x;
  cpu::rope_forward(y.data(), pos.data(), tab, N, H, dh, ld);
  cpu::rope_backward(y.data(), pos.data(), tab, N, H, dh, ld);
  EXPECT_TRUE(all_close(y, x, 1e-6, 1e-5));
  // dL/dx for L = <w, R x> is backward(w): compare with FD of the double reference.
  auto g = w;
  cpu::rope_backward(g.data(), pos.data(), tab, N, H, dh, ld);
  Vec xd(x.begin(), x.end()), wd(w.begin(), w.end());
  auto L = [&] {
    Vec r = rope_ref(xd, pos, N, H, dh, ld, rot, 500.0);
    double s = 0;
    for (size_t i = 0; i < r.size(); ++i) s += wd[i] * r[i];
    return s;
  };
  expect_grad_fd(g, xd, L, "dx");
}

TEST(Rope, BadInputThrows) {
  auto tab = cpu::rope_table(8, 4, 10000.0);
  std::vector<float> x(2 * 4);
  std::vector<int32_t> pos = {0, 8};
  expect_error([&] { cpu::rope_forward(x.data(), pos.data(), tab, 2, 1, 4, 4); },
               {"position 8", "row 1", "[0, 8)"});
  expect_error([&] { cpu::rope_table(8, 5, 10000.0); }, {"even", "5"});
  expect_error([&] { cpu::rope_forward(x.data(), pos.data(), tab, 1, 1, 2, 2); }, {"head dim 2"});
}

// --------------------------------------------------------------------------------- activations

double silu(double a) { return a / (1 + std::exp(-a)); }
double gelu(double u) { return 0.5 * u * (1 + std::erf(u / std::sqrt(2.0))); }

TEST(Activation, SwigluForwardBackward) {
  const int64_t N = 5, F = 7;
  auto in = randn(N * 2 * F, 10, 2.0f), w = randn(N * F, 11);
  Vec x(in.begin(), in.end()), wd(w.begin(), w.end());
  auto ref = [&] {
    Vec y(N * F);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < F; ++j) y[n * F + j] = silu(x[n * 2 * F + j]) * x[n * 2 * F + F + j];
    return y;
  };
  std::vector<float> out(N * F);
  cpu::swiglu_forward(out.data(), in.data(), N, F);
  Vec y = ref();
  EXPECT_TRUE(all_close(out, std::vector<float>(y.begin(), y.end()), 1e-6, 1e-5));
  std::vector<float> din(in.size(), NAN);  // overwritten
  cpu::swiglu_backward(din.data(), w.data(), in.data(), N, F);
  auto L = [&] {
    Vec r = ref();
    double s = 0;
    for (size_t i = 0; i < r.size(); ++i) s += wd[i] * r[i];
    return s;
  };
  expect_grad_fd(din, x, L, "din");
}

TEST(Activation, SquaredReluForwardBackward) {
  const int64_t N = 3, F = 7;
  auto in = randn(N * F, 12, 2.0f), w = randn(N * F, 13);
  in[4] = 0.0f;
  in[5] = -0.0f;
  std::vector<float> out(N * F), din(N * F, NAN);
  cpu::squared_relu_forward(out.data(), in.data(), N, F);
  cpu::squared_relu_backward(din.data(), w.data(), in.data(), N, F);
  for (int64_t i = 0; i < N * F; ++i) {
    const double u = in[i], r = u > 0 ? u : 0;
    EXPECT_NEAR(out[i], r * r, 1e-6 * (1 + r * r)) << i;
    EXPECT_NEAR(din[i], w[i] * 2 * r, 1e-6 * (1 + std::fabs(w[i] * 2 * r))) << i;
    if (u > 0.05 || u < -0.05) {  // away from the kink, FD of the reference agrees
      auto f = [&](double v) { return v > 0 ? v * v : 0.0; };
      const double h = 1e-5, g = w[i] * (f(u + h) - f(u - h)) / (2 * h);
      EXPECT_NEAR(din[i], g, 1e-4 * (1 + std::fabs(g))) << i;
    }
  }
  EXPECT_EQ(din[4], 0.0f) << "squared ReLU gradient at 0 must be 0";
  EXPECT_EQ(din[5], 0.0f);
}

TEST(Activation, GeluMatchesErfReferenceAndFiniteDifferences) {
  const int64_t N = 4, F = 9;
  auto in = randn(N * F, 14, 2.5f), w = randn(N * F, 15);
  std::vector<float> out(N * F), din(N * F, NAN);
  cpu::gelu_forward(out.data(), in.data(), N, F);
  cpu::gelu_backward(din.data(), w.data(), in.data(), N, F);
  Vec x(in.begin(), in.end());
  for (int64_t i = 0; i < N * F; ++i) EXPECT_NEAR(out[i], gelu(x[i]), 1e-6 + 1e-6 * std::fabs(out[i]));
  EXPECT_NEAR(gelu(1.0), 0.8413447460685429, 1e-12);  // the reference itself: Phi(1)
  Vec wd(w.begin(), w.end());
  auto L = [&] {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += wd[i] * gelu(x[i]);
    return s;
  };
  expect_grad_fd(din, x, L, "din");
}

// -------------------------------------------------------------------------- softmax cross-entropy

void ce_ref(Vec& loss, Vec& lse, const Vec& z, const std::vector<int32_t>& t, int64_t N, int64_t V) {
  loss.assign(N, 0.0);
  lse.assign(N, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, z[n * V + j]);
    for (int64_t j = 0; j < V; ++j) s += std::exp(z[n * V + j] - mx);
    lse[n] = mx + std::log(s);
    loss[n] = t[n] < 0 ? 0.0 : lse[n] - z[n * V + t[n]];
  }
}

TEST(CrossEntropy, ForwardBackwardWithIgnoredRowsAndAliasing) {
  const int64_t N = 6, V = 13;
  auto logits = randn(N * V, 20, 3.0f), dloss = randn(N, 21);
  for (int64_t j = 0; j < V; ++j) logits[2 * V + j] += 1000.0f;  // needs the max subtraction
  std::vector<int32_t> t = {4, -1, 12, 0, -1, 7};
  std::vector<float> loss(N), lse(N);
  cpu::cross_entropy_forward(loss.data(), lse.data(), logits.data(), t.data(), N, V);
  Vec z(logits.begin(), logits.end()), rl, rlse;
  ce_ref(rl, rlse, z, t, N, V);
  EXPECT_TRUE(all_close(loss, std::vector<float>(rl.begin(), rl.end()), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(lse, std::vector<float>(rlse.begin(), rlse.end()), 1e-5, 1e-6));
  EXPECT_EQ(loss[1], 0.0f);
  EXPECT_EQ(loss[4], 0.0f);

  std::vector<float> dz(N * V, NAN);  // overwritten, ignored rows included
  cpu::cross_entropy_backward(dz.data(), logits.data(), lse.data(), t.data(), dloss.data(), N, V);
  Vec dl(dloss.begin(), dloss.end());
  auto L = [&] {
    Vec l, s;
    ce_ref(l, s, z, t, N, V);
    double acc = 0;
    for (int64_t n = 0; n < N; ++n) acc += dl[n] * l[n];
    return acc;
  };
  expect_grad_fd(dz, z, L, "dlogits");
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(dz[1 * V + j], 0.0f) << "ignored row has gradient";

  // In place: dlogits aliasing logits gives the same result.
  auto inplace = logits;
  cpu::cross_entropy_backward(inplace.data(), inplace.data(), lse.data(), t.data(), dloss.data(),
                              N, V);
  EXPECT_TRUE(all_close(inplace, dz, 0, 0));
}

TEST(CrossEntropy, BadTargetThrowsNamingValueAndRow) {
  const int64_t N = 3, V = 5;
  auto logits = randn(N * V, 1);
  std::vector<float> loss(N), lse(N), dl(N, 1.0f);
  std::vector<int32_t> t = {0, 4, 5};
  expect_error([&] { cpu::cross_entropy_forward(loss.data(), lse.data(), logits.data(), t.data(), N, V); },
               {"target token 5", "row 2"});
  t = {-2, 0, 0};
  expect_error([&] {
    cpu::cross_entropy_backward(logits.data(), logits.data(), lse.data(), t.data(), dl.data(), N, V);
  }, {"target token -2", "row 0"});
}

// -------------------------------------------------------------------------------------- adamw

TEST(AdamW, OneAndTwoStepsMatchHandComputedReference) {
  for (float wd : {0.0f, 0.1f}) {
    SCOPED_TRACE(wd);
    const cpu::AdamWStep s1{1e-2f, 0.9f, 0.95f, 1e-8f, wd, 1};
    std::vector<float> p = {1.0f, -2.0f, 0.5f}, m = {0, 0, 0}, v = {0, 0, 0};
    const std::vector<float> g = {0.5f, 1.0f, -3.0f};
    cpu::adamw_update(p.data(), m.data(), v.data(), g.data(), 3, s1);
    // Step 1 from zero moments: mhat = g, vhat = g^2, so the update is lr*(sign(g) + wd*p).
    const double p0[3] = {1.0, -2.0, 0.5};
    for (int i = 0; i < 3; ++i) {
      const double gi = g[i];
      // (1 - beta) is rounded to fp32, hence the relative 1e-6.
      EXPECT_NEAR(m[i], 0.1 * gi, 1e-6 * std::fabs(gi));
      EXPECT_NEAR(v[i], 0.05 * gi * gi, 1e-6 * gi * gi);
      const double want = p0[i] - 1e-2 * (gi / (std::fabs(gi) + 1e-8) + wd * p0[i]);
      EXPECT_NEAR(p[i], want, 1e-6) << i;
    }
    // Step 2 with another gradient, reference written out in double.
    const cpu::AdamWStep s2{1e-2f, 0.9f, 0.95f, 1e-8f, wd, 2};
    const std::vector<float> g2 = {-1.0f, 0.25f, 2.0f};
    std::vector<double> pd(p.begin(), p.end()), md(m.begin(), m.end()), vd(v.begin(), v.end());
    cpu::adamw_update(p.data(), m.data(), v.data(), g2.data(), 3, s2);
    for (int i = 0; i < 3; ++i) {
      md[i] = 0.9 * md[i] + 0.1 * g2[i];
      vd[i] = 0.95 * vd[i] + 0.05 * double(g2[i]) * g2[i];
      const double mh = md[i] / (1 - 0.81), vh = vd[i] / (1 - 0.95 * 0.95);
      const double want = pd[i] - 1e-2 * (mh / (std::sqrt(vh) + 1e-8) + wd * pd[i]);
      EXPECT_NEAR(m[i], md[i], 1e-6 * (1 + std::fabs(md[i])));
      EXPECT_NEAR(v[i], vd[i], 1e-6 * (1 + vd[i]));
      EXPECT_NEAR(p[i], want, 1e-6) << i;
    }
  }
  std::vector<float> p(1), m(1), v(1), g(1);
  expect_error([&] { cpu::adamw_update(p.data(), m.data(), v.data(), g.data(), 1, {1, 0.9f, 0.99f, 1e-8f, 0, 0}); },
               {"step must start at 1"});
}

// ------------------------------------------------------------------------------- gemm / linear

TEST(Gemm, AllTransposesWithStridesAndBeta) {
  const int64_t M = 5, N = 7, K = 3, pad = 2;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(std::to_string(ta) + std::to_string(tb));
      const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
      const int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
      auto A = randn(ar * lda, 1), B = randn(br * ldb, 2), C = randn(M * ldc, 3);
      auto C0 = C;
      cpu::gemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 2.0f, C.data(), ldc);
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k)
            s += double(ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
          EXPECT_NEAR(C[i * ldc + j], 0.5 * s + 2.0 * C0[i * ldc + j], 1e-5) << i << "," << j;
        }
        for (int64_t j = N; j < ldc; ++j) EXPECT_EQ(C[i * ldc + j], C0[i * ldc + j]) << "pad";
      }
    }
  // K == 0: C = beta * C, and beta == 0 clears even NaN.
  std::vector<float> C(4, NAN);
  cpu::gemm(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, C.data(), 2);
  for (float c : C) EXPECT_EQ(c, 0.0f);
}

TEST(Linear, ForwardBackwardAndContracts) {
  const int64_t rows = 5, in = 7, out = 3;
  auto x = randn(rows * in, 1), w = randn(out * in, 2), dy = randn(rows * out, 3);
  std::vector<float> y(rows * out);
  cpu::linear_forward(y.data(), x.data(), w.data(), rows, in, out);
  Vec xd(x.begin(), x.end()), wd(w.begin(), w.end()), dyd(dy.begin(), dy.end());
  auto L = [&] {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double acc = 0;
        for (int64_t i = 0; i < in; ++i) acc += xd[r * in + i] * wd[o * in + i];
        s += dyd[r * out + o] * acc;
      }
    return s;
  };
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += xd[r * in + i] * wd[o * in + i];
      EXPECT_NEAR(y[r * out + o], acc, 1e-5);
    }
  std::vector<float> dx(rows * in, NAN), dw(out * in, 0.0f);
  cpu::linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rows, in, out, false);
  expect_grad_fd(dx, xd, L, "dx");
  expect_grad_fd(dw, wd, L, "dw");
  // accumulate_dx = true adds; dw always accumulates.
  auto px = randn(rows * in, 4), pw = randn(out * in, 5);
  auto dx2 = px, dw2 = pw;
  for (int rep = 0; rep < 2; ++rep)
    cpu::linear_backward(dx2.data(), dw2.data(), dy.data(), x.data(), w.data(), rows, in, out, true);
  for (size_t i = 0; i < px.size(); ++i) px[i] += 2 * dx[i];
  for (size_t i = 0; i < pw.size(); ++i) pw[i] += 2 * dw[i];
  EXPECT_TRUE(all_close(dx2, px, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(dw2, pw, 1e-5, 1e-5));
  // dx may be null.
  cpu::linear_backward(nullptr, dw2.data(), dy.data(), x.data(), w.data(), rows, in, out, false);
}

}  // namespace
}  // namespace ff
