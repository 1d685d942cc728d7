// The Mamba2 mixer's other two kernels: the depthwise causal conv1d + SiLU (with its decode step
// and prefill state) and the grouped gated RMSNorm. Forward against fp64 references written here,
// backward against central finite differences of those references, strided rows, the
// accumulate / overwrite contract.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/cpu/causal_conv1d.h"
#include "kernels/cpu/norm.h"
#include "test_util.h"

namespace ff {
namespace {

using test::randn;
using Vec = std::vector<double>;

Vec f2d(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }
double silu(double u) { return u / (1 + std::exp(-u)); }

// Central difference of f with respect to x[i], in fp64 (h = 1e-5: truncation ~1e-10 |f'''|,
// rounding ~1e-16 |f| / h ~ 1e-11 |f|, both far below the fp32 kernels' errors).
double fd(const std::function<double()>& f, double& xi, double h = 1e-5) {
  const double saved = xi;
  xi = saved + h;
  const double up = f();
  xi = saved - h;
  const double down = f();
  xi = saved;
  return (up - down) / (2 * h);
}
double proj(const Vec& w, const Vec& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
  return s;
}

// The fp32 gradients below are sums of a few (K or a group's Cg) products of O(1) values, each
// with a handful of roundings (u = 2^-24 ~ 6e-8): errors ~ (Cg + 10) u ~ 1e-6 of the terms'
// magnitude, itself O(1) to O(10) here. 2e-5 (1 + |g|) keeps a margin of several times that.
void expect_grad_fd(const std::vector<float>& grad, Vec& x, const std::function<double()>& f, const char* what) {
  for (size_t i = 0; i < grad.size(); ++i) {
    const double want = fd(f, x[i]);
    EXPECT_NEAR(grad[i], want, 2e-5 * (1 + std::fabs(want))) << what << "[" << i << "]";
  }
}

// ---------------------------------------------------------------------------------------------
// Causal conv1d + SiLU

// out[b, t, k] = silu(bias[k] + Σ_j w[k, j] in[b, t - (K-1) + j, k]) (zero before t = 0);
// mag: |bias| + Σ_j |w in|, the magnitude of u's terms.
Vec conv_ref(const Vec& in, int64_t ld, const Vec& w, const Vec& bias, int64_t Bs, int64_t L, int64_t Ch, int64_t K,
             Vec* u_out = nullptr, Vec* mag = nullptr) {
  Vec out(Bs * L * Ch);
  if (u_out) u_out->assign(out.size(), 0);
  if (mag) mag->assign(out.size(), 0);
  for (int64_t b = 0; b < Bs; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t k = 0; k < Ch; ++k) {
        double u = bias[k], m = std::fabs(bias[k]);
        for (int64_t j = 0; j < K; ++j) {
          const int64_t tt = t - (K - 1) + j;
          if (tt < 0) continue;
          u += w[k * K + j] * in[(b * L + tt) * ld + k];
          m += std::fabs(w[k * K + j] * in[(b * L + tt) * ld + k]);
        }
        const int64_t i = (b * L + t) * Ch + k;
        out[i] = silu(u);
        if (u_out) (*u_out)[i] = u;
        if (mag) (*mag)[i] = m;
      }
  return out;
}

// Two sequences (the padding at each start), 70 channels (two channel blocks of the backward),
// kernel 4, input rows a slice of a wider row.
struct ConvCase {
  int64_t Bs = 2, L = 9, Ch = 70, K = 4, ld = 83;
  std::vector<float> in = randn(Bs * L * ld, 1000), w = randn(Ch * K, 1001, 0.5f), bias = randn(Ch, 1002, 0.5f);
};

TEST(CausalConv1d, ForwardMatchesScalarReference) {
  // u sums K + 1 terms with one rounding each, silu adds a few ulp: |err| <= 16 u (mag + |out|).
  const ConvCase c;
  std::vector<float> out(c.Bs * c.L * c.Ch), u(out.size());
  cpu::causal_conv1d_silu_forward(out.data(), u.data(), c.in.data(), c.w.data(), c.bias.data(), c.Bs, c.L, c.Ch, c.K,
                                  c.ld);
  Vec uref, mag;
  const Vec ref = conv_ref(f2d(c.in), c.ld, f2d(c.w), f2d(c.bias), c.Bs, c.L, c.Ch, c.K, &uref, &mag);
  const double ulp = std::ldexp(1.0, -24);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_NEAR(u[i], uref[i], 16 * ulp * mag[i]) << i;
    EXPECT_NEAR(out[i], ref[i], 16 * ulp * (mag[i] + std::fabs(ref[i]))) << i;
  }
  // u may be null (inference): the same output.
  std::vector<float> out2(out.size());
  cpu::causal_conv1d_silu_forward(out2.data(), nullptr, c.in.data(), c.w.data(), c.bias.data(), c.Bs, c.L, c.Ch, c.K,
                                  c.ld);
  EXPECT_EQ(out2, out);
}

TEST(CausalConv1d, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const ConvCase c;
  const int64_t n = c.Bs * c.L * c.Ch, ld_din = c.Ch + 3;
  const std::vector<float> wo = randn(n, 1003);
  std::vector<float> out(n), u(n);
  cpu::causal_conv1d_silu_forward(out.data(), u.data(), c.in.data(), c.w.data(), c.bias.data(), c.Bs, c.L, c.Ch, c.K,
                                  c.ld);
  std::vector<float> din(c.Bs * c.L * ld_din, 42.0f), dw(c.Ch * c.K, 0.0f), db(c.Ch, 0.0f);
  cpu::causal_conv1d_silu_backward(din.data(), dw.data(), db.data(), wo.data(), u.data(), c.in.data(), c.w.data(),
                                   c.Bs, c.L, c.Ch, c.K, c.ld, ld_din);
  Vec in = f2d(c.in), w = f2d(c.w), bias = f2d(c.bias), wod = f2d(wo);
  auto J = [&] { return proj(wod, conv_ref(in, c.ld, w, bias, c.Bs, c.L, c.Ch, c.K)); };
  for (int64_t r = 0; r < c.Bs * c.L; ++r)  // every entry; din rows have stride ld_din, in rows ld
    for (int64_t k = 0; k < c.Ch; ++k) {
      const double want = fd(J, in[r * c.ld + k]);
      EXPECT_NEAR(din[r * ld_din + k], want, 2e-5 * (1 + std::fabs(want))) << "din row " << r << " ch " << k;
    }
  for (int64_t r = 0; r < c.Bs * c.L; ++r)
    for (int64_t k = c.Ch; k < ld_din; ++k) EXPECT_EQ(din[r * ld_din + k], 42.0f);  // the stride's padding
  expect_grad_fd(dw, w, J, "dw");
  expect_grad_fd(db, bias, J, "dbias");

  // dw, dbias accumulate; din is overwritten (garbage in, the same result out).
  std::vector<float> din2(din.size(), -5.0f), dw2 = randn(dw.size(), 1004), db2 = randn(db.size(), 1005);
  for (int64_t r = 0; r < c.Bs * c.L; ++r)
    for (int64_t k = c.Ch; k < ld_din; ++k) din2[r * ld_din + k] = 42.0f;
  const std::vector<float> pw = dw2, pb = db2;
  for (int rep = 0; rep < 2; ++rep)
    cpu::causal_conv1d_silu_backward(din2.data(), dw2.data(), db2.data(), wo.data(), u.data(), c.in.data(), c.w.data(),
                                     c.Bs, c.L, c.Ch, c.K, c.ld, ld_din);
  EXPECT_EQ(din2, din);
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_NEAR(dw2[i], pw[i] + 2 * dw[i], 1e-5 * (1 + std::fabs(dw[i]))) << i;
  for (size_t i = 0; i < db.size(); ++i) EXPECT_NEAR(db2[i], pb[i] + 2 * db[i], 1e-5 * (1 + std::fabs(db[i]))) << i;
}

TEST(CausalConv1d, StepAfterFinalStateEqualsForward) {
  // Prefill the first t0 positions (final_state), then one step per position: each step's output
  // is the forward's at that position (the same K + 1 terms; each within 16 u (mag + |out|) of the
  // exact value as in the forward test, so within twice that of each other), and the state after
  // the last step is the full sequence's final_state (copies: exactly).
  const ConvCase c;
  const int64_t S = c.K - 1, n = c.Bs * c.L * c.Ch;
  const double ulp = std::ldexp(1.0, -24);
  Vec mag;
  conv_ref(f2d(c.in), c.ld, f2d(c.w), f2d(c.bias), c.Bs, c.L, c.Ch, c.K, nullptr, &mag);
  std::vector<float> out(n);
  cpu::causal_conv1d_silu_forward(out.data(), nullptr, c.in.data(), c.w.data(), c.bias.data(), c.Bs, c.L, c.Ch, c.K,
                                  c.ld);
  std::vector<float> full(c.Bs * c.Ch * S);
  cpu::causal_conv1d_final_state(full.data(), c.in.data(), c.Bs, c.L, c.Ch, c.K, c.ld);
  for (int64_t t0 : {0, 2, 5}) {  // 0 and 2 < K - 1: a state partly of zero padding
    std::vector<float> state(c.Bs * c.Ch * S);
    for (int64_t b = 0; b < c.Bs; ++b)  // each sequence's first t0 rows
      cpu::causal_conv1d_final_state(&state[b * c.Ch * S], &c.in[b * c.L * c.ld], 1, t0, c.Ch, c.K, c.ld);
    for (int64_t t = t0; t < c.L; ++t) {
      std::vector<float> o(c.Bs * c.Ch);
      // the step's input rows are the sequences' rows t: a stride of L rows between them
      cpu::causal_conv1d_silu_step(o.data(), state.data(), &c.in[t * c.ld], c.w.data(), c.bias.data(), c.Bs, c.Ch,
                                   c.K, c.L * c.ld);
      for (int64_t b = 0; b < c.Bs; ++b)
        for (int64_t k = 0; k < c.Ch; ++k) {
          const int64_t i = (b * c.L + t) * c.Ch + k;
          EXPECT_NEAR(o[b * c.Ch + k], out[i], 32 * ulp * (mag[i] + std::fabs(out[i]))) << "t0 " << t0 << " t " << t;
        }
    }
    EXPECT_EQ(state, full) << "t0 " << t0;
  }
}

// ---------------------------------------------------------------------------------------------
// Gated RMSNorm over groups

// v = y silu(z); per row and group r = 1 / sqrt(mean(v^2) + eps); out = v r w.
Vec gated_ref(const Vec& y, const Vec& z, int64_t ldz, const Vec& w, double eps, int64_t N, int64_t Ch, int64_t groups,
              Vec* rstd = nullptr) {
  const int64_t Cg = Ch / groups;
  Vec out(N * Ch);
  if (rstd) rstd->assign(N * groups, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      double ss = 0;
      for (int64_t k = g * Cg; k < (g + 1) * Cg; ++k) {
        const double v = y[n * Ch + k] * silu(z[n * ldz + k]);
        ss += v * v;
      }
      const double r = 1 / std::sqrt(ss / Cg + eps);
      if (rstd) (*rstd)[n * groups + g] = r;
      for (int64_t k = g * Cg; k < (g + 1) * Cg; ++k) out[n * Ch + k] = y[n * Ch + k] * silu(z[n * ldz + k]) * r * w[k];
    }
  return out;
}

// 3 groups of 8 channels; z a slice of in_proj's row (stride 2 Ch + 5); dz written with a stride.
struct NormCase {
  int64_t N = 5, Ch = 24, groups = 3, ldz = 53, lddz = 29;
  float eps = 1e-5f;
  std::vector<float> y = randn(N * Ch, 1100), z = randn(N * ldz, 1101, 1.5f), w = randn(Ch, 1102);
};

TEST(GatedRmsNorm, ForwardMatchesDoubleReference) {
  // Each output: v (2 roundings plus silu's few ulp), the group's mean of squares (Cg roundings,
  // here accumulated in fp64), sqrt and two products: |err| <= 16 u |out|, rstd within 8 u.
  const NormCase c;
  std::vector<float> out(c.N * c.Ch), rstd(c.N * c.groups);
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), c.y.data(), c.z.data(), c.w.data(), c.eps, c.N, c.Ch, c.groups,
                             c.ldz);
  Vec rref;
  const Vec ref = gated_ref(f2d(c.y), f2d(c.z), c.ldz, f2d(c.w), c.eps, c.N, c.Ch, c.groups, &rref);
  const double u = std::ldexp(1.0, -24);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 16 * u * std::fabs(ref[i]) + 1e-30) << i;
  for (size_t i = 0; i < rstd.size(); ++i) EXPECT_NEAR(rstd[i], rref[i], 8 * u * rref[i]) << i;
}

TEST(GatedRmsNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const NormCase c;
  const std::vector<float> wo = randn(c.N * c.Ch, 1103);
  std::vector<float> out(c.N * c.Ch), rstd(c.N * c.groups);
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), c.y.data(), c.z.data(), c.w.data(), c.eps, c.N, c.Ch, c.groups,
                             c.ldz);
  std::vector<float> dy(c.N * c.Ch, 9.0f), dz(c.N * c.lddz, 42.0f), dw(c.Ch, 0.0f);
  cpu::gated_rmsnorm_backward(dy.data(), dz.data(), dw.data(), wo.data(), c.y.data(), c.z.data(), c.w.data(),
                              rstd.data(), c.N, c.Ch, c.groups, c.ldz, c.lddz);
  Vec y = f2d(c.y), z = f2d(c.z), w = f2d(c.w), wod = f2d(wo);
  auto J = [&] { return proj(wod, gated_ref(y, z, c.ldz, w, c.eps, c.N, c.Ch, c.groups)); };
  expect_grad_fd(dy, y, J, "dy");
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.Ch; ++k) {
      const double want = fd(J, z[n * c.ldz + k]);
      EXPECT_NEAR(dz[n * c.lddz + k], want, 2e-5 * (1 + std::fabs(want))) << "dz " << n << "," << k;
    }
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = c.Ch; k < c.lddz; ++k) EXPECT_EQ(dz[n * c.lddz + k], 42.0f);  // the stride's padding
  expect_grad_fd(dw, w, J, "dw");

  // dw accumulates; dy and dz are overwritten.
  std::vector<float> dy2(dy.size(), -3.0f), dz2(dz.size(), -3.0f), dw2 = randn(c.Ch, 1104);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = c.Ch; k < c.lddz; ++k) dz2[n * c.lddz + k] = 42.0f;
  const std::vector<float> pw = dw2;
  for (int rep = 0; rep < 2; ++rep)
    cpu::gated_rmsnorm_backward(dy2.data(), dz2.data(), dw2.data(), wo.data(), c.y.data(), c.z.data(), c.w.data(),
                                rstd.data(), c.N, c.Ch, c.groups, c.ldz, c.lddz);
  EXPECT_EQ(dy2, dy);
  EXPECT_EQ(dz2, dz);
  for (int64_t k = 0; k < c.Ch; ++k) EXPECT_NEAR(dw2[k], pw[k] + 2 * dw[k], 1e-5 * (1 + std::fabs(dw[k]))) << k;
}

}  // namespace
}  // namespace ff
