// The SSD scan (kernels/cpu/ssd_scan.h) against references written here: the whole-sequence
// quadratic ("dual") form and the sequential adjoint of specs/methods.md §3.4, in fp64; central
// finite differences; fp32 against fp64 within a rounding bound; strided inputs; thread-count
// independence; the accumulate contract; and Δ = softplus(dt + bias).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ssd_scan.h"
#include "test_util.h"

namespace ff {
namespace {

using Vec = std::vector<double>;
using test::randn;

// One problem: sizes and inputs in fp64, every value representable in fp32 (so the fp32 run
// sees exactly the same inputs).
struct Scan {
  cpu::ScanSizes s;
  Vec x, dt, A, B, C, D, init;
  int64_t hpg() const { return s.heads / s.groups; }
};

Vec f2d(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }
template <class T>
std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
Vec abs_of(Vec v) {
  for (auto& e : v) e = std::fabs(e);
  return v;
}

// Δ in (0.02, 0.27), A in (-3.5, -0.5): decays exp(ΔA) in (0.39, 0.99), a few chunks of memory.
Scan make_scan(int64_t Bs, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N, uint64_t seed) {
  Scan p;
  p.s = {Bs, L, H, P, G, N, 16};
  p.x = f2d(randn(Bs * L * H * P, seed));
  p.B = f2d(randn(Bs * L * G * N, seed + 1, 0.5f));
  p.C = f2d(randn(Bs * L * G * N, seed + 2, 0.5f));
  p.D = f2d(randn(H, seed + 3));
  p.init = f2d(randn(Bs * H * P * N, seed + 4, 0.5f));
  auto r = randn(Bs * L * H, seed + 5), q = randn(H, seed + 6);
  for (auto& v : r) v = 0.02f + 0.25f / (1.0f + std::exp(-v));
  for (auto& v : q) v = -(0.5f + 3.0f / (1.0f + std::exp(-v)));
  p.dt = f2d(r);
  p.A = f2d(q);
  return p;
}

// The quadratic form over the whole sequence (one chunk of length L), per (b, h), s_l = Σ_{i<=l} Δ_i A:
//   y_l = Σ_{j<=l} (C_l · B_j) exp(s_l - s_j) Δ_j x_j + exp(s_l) S_init C_l + D x_l
//   final = exp(s_{L-1}) S_init + Σ_j exp(s_{L-1} - s_j) Δ_j x_j B_jᵀ
void quadratic_ref(Vec& y, Vec& fin, const Scan& p) {
  const auto& s = p.s;
  const int64_t L = s.len, H = s.heads, P = s.head_dim, G = s.groups, N = s.state;
  y.assign(s.batch * L * H * P, 0.0);
  fin.assign(s.batch * H * P * N, 0.0);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / p.hpg();
      const double* S0 = &p.init[(b * H + h) * P * N];
      auto xr = [&](int64_t t) { return &p.x[((b * L + t) * H + h) * P]; };
      auto Br = [&](int64_t t) { return &p.B[((b * L + t) * G + g) * N]; };
      auto Cr = [&](int64_t t) { return &p.C[((b * L + t) * G + g) * N]; };
      auto dtv = [&](int64_t t) { return p.dt[(b * L + t) * H + h]; };
      Vec cs(L);
      for (int64_t t = 0; t < L; ++t) cs[t] = (t ? cs[t - 1] : 0.0) + dtv(t) * p.A[h];
      for (int64_t l = 0; l < L; ++l) {
        double* yl = &y[((b * L + l) * H + h) * P];
        for (int64_t q = 0; q < P; ++q) {
          double acc = p.D[h] * xr(l)[q];
          for (int64_t n = 0; n < N; ++n) acc += std::exp(cs[l]) * S0[q * N + n] * Cr(l)[n];
          for (int64_t j = 0; j <= l; ++j) {
            double cb = 0;
            for (int64_t n = 0; n < N; ++n) cb += Cr(l)[n] * Br(j)[n];
            acc += cb * std::exp(cs[l] - cs[j]) * dtv(j) * xr(j)[q];
          }
          yl[q] = acc;
        }
      }
      double* F = &fin[(b * H + h) * P * N];
      for (int64_t q = 0; q < P; ++q)
        for (int64_t n = 0; n < N; ++n) {
          double acc = L ? std::exp(cs[L - 1]) * S0[q * N + n] : S0[q * N + n];
          for (int64_t j = 0; j < L; ++j) acc += std::exp(cs[L - 1] - cs[j]) * dtv(j) * xr(j)[q] * Br(j)[n];
          F[q * N + n] = acc;
        }
    }
}

// The sequential adjoint (§3.4, the test's independent reference), with G_t = d/dS_t:
//   G_t = dY_t C_tᵀ + exp(Δ_{t+1} A) G_{t+1}  (G_{L-1} also takes dfinal)
//   dC_t = S_tᵀ dY_t,  dx_t = Δ_t G_t B_t + D dY_t,  dB_t = Δ_t G_tᵀ x_t,
//   dΔ_t = <G_t, x_t B_tᵀ> + A exp(Δ_t A) <G_t, S_{t-1}>,  dA = Σ_t Δ_t exp(Δ_t A) <G_t, S_{t-1}>,
//   dD = Σ_t <dY_t, x_t>,  dS_init = exp(Δ_0 A) G_0.
// m_t = <G_t, x_t B_tᵀ> + exp(Δ_t A) <G_t, S_{t-1}>: run on |inputs| it is the magnitude of dΔ_t's terms.
struct Grads {
  Vec dx, ddt, dA, dB, dC, dD, dinit, m;
};
Grads adjoint_ref(const Scan& p, const Vec& dy, const Vec& dfinal) {
  const auto& s = p.s;
  const int64_t L = s.len, H = s.heads, P = s.head_dim, G = s.groups, N = s.state, PN = P * N;
  Grads r{Vec(dy.size()), Vec(s.batch * L * H), Vec(H), Vec(p.B.size()), Vec(p.C.size()), Vec(H), Vec(p.init.size()),
          Vec(s.batch * L * H)};
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / p.hpg();
      auto xr = [&](int64_t t) { return &p.x[((b * L + t) * H + h) * P]; };
      auto dyr = [&](int64_t t) { return &dy[((b * L + t) * H + h) * P]; };
      auto Br = [&](int64_t t) { return &p.B[((b * L + t) * G + g) * N]; };
      auto Cr = [&](int64_t t) { return &p.C[((b * L + t) * G + g) * N]; };
      auto dtv = [&](int64_t t) { return p.dt[(b * L + t) * H + h]; };
      Vec S((L + 1) * PN);  // S[t + 1] = S_t, S[0] = S_init
      std::copy_n(&p.init[(b * H + h) * PN], PN, S.begin());
      for (int64_t t = 0; t < L; ++t)
        for (int64_t i = 0; i < PN; ++i)
          S[(t + 1) * PN + i] = std::exp(dtv(t) * p.A[h]) * S[t * PN + i] + dtv(t) * xr(t)[i / N] * Br(t)[i % N];
      Vec Gm(dfinal.begin() + (b * H + h) * PN, dfinal.begin() + (b * H + h + 1) * PN);
      for (int64_t t = L - 1; t >= 0; --t) {
        if (t + 1 < L)
          for (auto& v : Gm) v *= std::exp(dtv(t + 1) * p.A[h]);
        for (int64_t i = 0; i < PN; ++i) Gm[i] += dyr(t)[i / N] * Cr(t)[i % N];
        const double dec = std::exp(dtv(t) * p.A[h]);
        double gx = 0, gs = 0, dd = 0;
        for (int64_t i = 0; i < PN; ++i) {
          gx += Gm[i] * xr(t)[i / N] * Br(t)[i % N];
          gs += Gm[i] * S[t * PN + i];
          r.dC[((b * L + t) * G + g) * N + i % N] += S[(t + 1) * PN + i] * dyr(t)[i / N];
          r.dx[((b * L + t) * H + h) * P + i / N] += dtv(t) * Gm[i] * Br(t)[i % N];
          r.dB[((b * L + t) * G + g) * N + i % N] += dtv(t) * Gm[i] * xr(t)[i / N];
        }
        for (int64_t q = 0; q < P; ++q) {
          r.dx[((b * L + t) * H + h) * P + q] += p.D[h] * dyr(t)[q];
          dd += dyr(t)[q] * xr(t)[q];
        }
        r.ddt[(b * L + t) * H + h] = gx + p.A[h] * dec * gs;
        r.m[(b * L + t) * H + h] = gx + dec * gs;
        r.dA[h] += dtv(t) * dec * gs;
        r.dD[h] += dd;
      }
      const double d0 = L ? std::exp(dtv(0) * p.A[h]) : 1.0;
      for (int64_t i = 0; i < PN; ++i) r.dinit[(b * H + h) * PN + i] = d0 * Gm[i];
    }
  return r;
}

// The kernels in precision T on the problem's inputs, chunk Q.
template <class T>
struct Fwd {
  std::vector<T> y, states, fin;
};
template <class T>
struct Bwd {
  std::vector<T> dx, ddt, dB, dC, dA, dD, dinit;
};
template <class T>
Fwd<T> forward(const Scan& p, int64_t Q, bool with_init = true) {
  cpu::ScanSizes s = p.s;
  s.chunk = Q;
  Fwd<T> f{std::vector<T>(p.x.size()), std::vector<T>(s.batch * s.chunks() * s.heads * s.head_dim * s.state),
           std::vector<T>(p.init.size())};
  auto x = cast<T>(p.x), dt = cast<T>(p.dt), A = cast<T>(p.A), B = cast<T>(p.B), C = cast<T>(p.C), D = cast<T>(p.D),
       init = cast<T>(p.init);
  cpu::ssd_scan_forward<T>(f.y.data(), f.states.data(), f.fin.data(), x.data(), dt.data(), A.data(), B.data(),
                           C.data(), D.data(), with_init ? init.data() : nullptr, s);
  return f;
}
template <class T>
Bwd<T> backward(const Scan& p, int64_t Q, const Fwd<T>& f, const Vec& dy, const Vec& dfinal) {
  cpu::ScanSizes s = p.s;
  s.chunk = Q;
  const int64_t H = s.heads;
  Bwd<T> g{std::vector<T>(p.x.size()), std::vector<T>(p.dt.size()), std::vector<T>(p.B.size()),
           std::vector<T>(p.C.size()), std::vector<T>(H), std::vector<T>(H), std::vector<T>(p.init.size())};
  auto x = cast<T>(p.x), dt = cast<T>(p.dt), A = cast<T>(p.A), B = cast<T>(p.B), C = cast<T>(p.C), D = cast<T>(p.D),
       dyT = cast<T>(dy), dfT = cast<T>(dfinal);
  cpu::ssd_scan_backward<T>(g.dx.data(), g.ddt.data(), g.dB.data(), g.dC.data(), g.dA.data(), g.dD.data(),
                            g.dinit.data(), dyT.data(), dfT.data(), x.data(), dt.data(), A.data(), B.data(), C.data(),
                            D.data(), f.states.data(), s);
  return g;
}

// |got - want| <= tol * max|want| (a normwise relative bound) at every index.
template <class T>
::testing::AssertionResult close_norm(const std::vector<T>& got, const Vec& want, double tol) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  double mx = 0;
  for (double w : want) mx = std::max(mx, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(double(got[i]) - want[i]) <= tol * mx))
      return ::testing::AssertionFailure() << "at " << i << ": got " << double(got[i]) << ", want " << want[i]
                                           << " (tolerance " << tol * mx << ")";
  return ::testing::AssertionSuccess();
}
// |got - want| <= bound[i] at every index.
template <class T>
::testing::AssertionResult within(const std::vector<T>& got, const Vec& want, const Vec& bound) {
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(double(got[i]) - want[i]) <= bound[i]))
      return ::testing::AssertionFailure() << "at " << i << ": got " << double(got[i]) << ", want " << want[i]
                                           << " (bound " << bound[i] << ")";
  return ::testing::AssertionSuccess();
}
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// G = 2 groups of H/G = 2 heads, L = 37 (prime: no chunk size below divides it), nonzero S_init.
Scan standard() { return make_scan(2, 37, 4, 5, 2, 6, 100); }
constexpr int64_t kChunks[] = {1, 3, 16, 37, 64};  // 37 = one chunk; 64 > L: one short chunk

// fp64: a term passes at most ~N + Q + chunks roundings (< 150 here), each of relative size 2^-53
// ~ 1.1e-16: normwise errors below ~2e-14. 1e-12 leaves a wide margin yet catches any wrong term.
constexpr double kFp64Tol = 1e-12;

TEST(SsmScan, ChunkedMatchesSequentialAndQuadraticForm) {
  const Scan p = standard();
  Vec yq, fq;
  quadratic_ref(yq, fq, p);
  // The library's sequential recurrence, from the same initial state.
  Vec ys(p.x.size()), state = p.init;
  cpu::ssd_scan_sequential<double>(ys.data(), state.data(), p.x.data(), p.dt.data(), p.A.data(), p.B.data(),
                                   p.C.data(), p.D.data(), p.s);
  EXPECT_TRUE(close_norm(ys, yq, kFp64Tol)) << "sequential y";
  EXPECT_TRUE(close_norm(state, fq, kFp64Tol)) << "sequential final state";
  for (int64_t Q : kChunks) {
    const Fwd<double> f = forward<double>(p, Q);
    EXPECT_TRUE(close_norm(f.y, yq, kFp64Tol)) << "chunked y, Q=" << Q;
    EXPECT_TRUE(close_norm(f.fin, fq, kFp64Tol)) << "chunked final state, Q=" << Q;
    // Saved state entering chunk c = the sequential state after c*Q positions.
    cpu::ScanSizes s = p.s;
    s.chunk = Q;
    for (int64_t c = 0; c < s.chunks(); c += std::max<int64_t>(1, s.chunks() / 4)) {
      cpu::ScanSizes prefix = p.s;
      prefix.len = c * Q;
      Vec st = p.init, yy(std::max<int64_t>(1, p.s.batch * c * Q * p.s.heads * p.s.head_dim));
      Vec xs, dts, Bs, Cs;  // the first c*Q rows of each sequence
      for (int64_t b = 0; b < p.s.batch; ++b) {
        const int64_t L = p.s.len, HP = p.s.heads * p.s.head_dim, GN = p.s.groups * p.s.state, H = p.s.heads;
        xs.insert(xs.end(), p.x.begin() + b * L * HP, p.x.begin() + (b * L + c * Q) * HP);
        dts.insert(dts.end(), p.dt.begin() + b * L * H, p.dt.begin() + (b * L + c * Q) * H);
        Bs.insert(Bs.end(), p.B.begin() + b * L * GN, p.B.begin() + (b * L + c * Q) * GN);
        Cs.insert(Cs.end(), p.C.begin() + b * L * GN, p.C.begin() + (b * L + c * Q) * GN);
      }
      cpu::ssd_scan_sequential<double>(yy.data(), st.data(), xs.data(), dts.data(), p.A.data(), Bs.data(), Cs.data(),
                                       p.D.data(), prefix);
      const int64_t HPN = p.s.heads * p.s.head_dim * p.s.state;
      for (int64_t b = 0; b < p.s.batch; ++b) {
        std::vector<double> saved(f.states.begin() + (b * s.chunks() + c) * HPN,
                                  f.states.begin() + (b * s.chunks() + c + 1) * HPN);
        EXPECT_TRUE(close_norm(saved, Vec(st.begin() + b * HPN, st.begin() + (b + 1) * HPN), kFp64Tol))
            << "chunk state " << c << " of sequence " << b << ", Q=" << Q;
      }
    }
  }
  // No initial state means zeros.
  Scan z = p;
  std::fill(z.init.begin(), z.init.end(), 0.0);
  quadratic_ref(yq, fq, z);
  const Fwd<double> f0 = forward<double>(p, 16, /*with_init=*/false);
  EXPECT_TRUE(close_norm(f0.y, yq, kFp64Tol));
  EXPECT_TRUE(close_norm(f0.fin, fq, kFp64Tol));
}

TEST(SsmScan, PrefillThenDecodeStepsMatchTheFullSequence) {
  // Chunked forward over the first 30 positions, then the sequential recurrence one position at a
  // time (the decode step) from its final state: the outputs of positions 30..36 and the final
  // state equal the full-sequence forward's.
  const Scan p = make_scan(1, 37, 4, 5, 2, 6, 300);
  const int64_t L0 = 30, H = p.s.heads, P = p.s.head_dim, HP = H * P, GN = p.s.groups * p.s.state;
  const Fwd<double> full = forward<double>(p, 16);
  Scan pre = p;
  pre.s.len = L0;
  const Fwd<double> head = forward<double>(pre, 16);
  Vec state = head.fin;
  cpu::ScanSizes one = p.s;
  one.len = 1;
  for (int64_t t = L0; t < p.s.len; ++t) {
    Vec yt(HP);
    cpu::ssd_scan_sequential<double>(yt.data(), state.data(), &p.x[t * HP], &p.dt[t * H], p.A.data(), &p.B[t * GN],
                                     &p.C[t * GN], p.D.data(), one);
    EXPECT_TRUE(close_norm(yt, Vec(full.y.begin() + t * HP, full.y.begin() + (t + 1) * HP), kFp64Tol)) << t;
  }
  EXPECT_TRUE(close_norm(state, Vec(full.fin.begin(), full.fin.end()), kFp64Tol));
}

TEST(SsmScan, BackwardMatchesSequentialAdjoint) {
  const Scan p = standard();
  const Vec dy = f2d(randn(p.x.size(), 200)), dfinal = f2d(randn(p.init.size(), 201));
  const Grads r = adjoint_ref(p, dy, dfinal);
  for (int64_t Q : kChunks) {
    const Bwd<double> g = backward<double>(p, Q, forward<double>(p, Q), dy, dfinal);
    EXPECT_TRUE(close_norm(g.dx, r.dx, kFp64Tol)) << "dx, Q=" << Q;
    EXPECT_TRUE(close_norm(g.ddt, r.ddt, kFp64Tol)) << "ddt, Q=" << Q;
    EXPECT_TRUE(close_norm(g.dA, r.dA, kFp64Tol)) << "dA, Q=" << Q;
    EXPECT_TRUE(close_norm(g.dB, r.dB, kFp64Tol)) << "dB, Q=" << Q;
    EXPECT_TRUE(close_norm(g.dC, r.dC, kFp64Tol)) << "dC, Q=" << Q;
    EXPECT_TRUE(close_norm(g.dD, r.dD, kFp64Tol)) << "dD, Q=" << Q;
    EXPECT_TRUE(close_norm(g.dinit, r.dinit, kFp64Tol)) << "dinitial, Q=" << Q;
  }
}

TEST(SsmScan, BackwardMatchesFiniteDifferences) {
  // J = <Wy, y> + <Wf, final>; its gradient is the backward with dy = Wy, dfinal = Wf. Central
  // differences in fp64 with step h = 1e-5: truncation ~h^2 |J'''| ~ 1e-9, rounding
  // ~1e-16 |J| / h ~ 1e-10; the budget 1e-6 (1 + |dJ|) is far above both.
  const Scan p0 = make_scan(2, 11, 4, 3, 2, 4, 400);
  const Vec wy = f2d(randn(p0.x.size(), 401)), wf = f2d(randn(p0.init.size(), 402));
  const int64_t Q = 4;
  const Bwd<double> g = backward<double>(p0, Q, forward<double>(p0, Q), wy, wf);
  Scan p = p0;
  auto J = [&] {
    const Fwd<double> f = forward<double>(p, Q);
    double j = 0;
    for (size_t i = 0; i < wy.size(); ++i) j += wy[i] * f.y[i];
    for (size_t i = 0; i < wf.size(); ++i) j += wf[i] * f.fin[i];
    return j;
  };
  Rng rng(403, "fd");
  auto check = [&](Vec& v, const std::vector<double>& grad, const char* what, int picks) {
    for (int k = 0; k < picks; ++k) {
      const size_t i = picks >= int(v.size()) ? size_t(k) : size_t(rng.uniform() * v.size()) % v.size();
      if (i >= v.size()) break;
      const double saved = v[i], h = 1e-5;
      v[i] = saved + h;
      const double up = J();
      v[i] = saved - h;
      const double down = J();
      v[i] = saved;
      const double want = (up - down) / (2 * h);
      EXPECT_NEAR(grad[i], want, 1e-6 * (1 + std::fabs(want))) << what << "[" << i << "]";
    }
  };
  check(p.x, g.dx, "dx", 8);
  check(p.dt, g.ddt, "ddt", 8);
  check(p.A, g.dA, "dA", 4);
  check(p.B, g.dB, "dB", 8);
  check(p.C, g.dC, "dC", 8);
  check(p.D, g.dD, "dD", 4);
  check(p.init, g.dinit, "dinitial", 8);
}

TEST(SsmScan, Fp32MatchesFp64WithinRoundingBound) {
  // Each output is a sum of products of inputs and exp factors; in fp32 each term picks up at
  // most K roundings of relative size u = 2^-24 on its way (its products, the exp's error of a few
  // ulp, the sums it passes through: over N or P, over a chunk, one per chunk boundary), so
  // |fp32 - fp64| <= K u Σ|terms|. Σ|terms| is the fp64 reference run on |x|, |B|, |C|, |D|,
  // |S_init|, |dY|, |dfinal| (the exp factors are positive already). The cumsum s carries an
  // absolute error <= Q u S (S = the largest |s| within a chunk), a relative 2 Q u S on every
  // exp(s_l - s_j): hence K = 2 (N + P) + 4 Q + 3 chunks + 2 Q S + 64. dΔ and dA are computed as
  // reverse cumsums of ds, whose terms cancel in pairs across a chunk; each cancelled term is one
  // of the sequential adjoint's (m_t, run on |inputs|) within the same chunk, times at most
  // (1 + |A| Δ): their bound takes the sum of m over the chunk.
  const Scan p = standard();
  const int64_t Q = 16, L = p.s.len, H = p.s.heads, N = p.s.state, P = p.s.head_dim;
  const int64_t nc = (L + Q - 1) / Q;
  const Vec dy = f2d(randn(p.x.size(), 500)), dfinal = f2d(randn(p.init.size(), 501));
  double S = 0, amax = 0, dtmax = 0;
  for (int64_t b = 0; b < p.s.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t c = 0; c < nc; ++c) {
        double acc = 0;
        for (int64_t t = c * Q; t < std::min(L, (c + 1) * Q); ++t) acc += p.dt[(b * L + t) * H + h] * -p.A[h];
        S = std::max(S, acc);
      }
  for (double a : p.A) amax = std::max(amax, -a);
  for (double d : p.dt) dtmax = std::max(dtmax, d);
  const double u = std::ldexp(1.0, -24), K = 2 * (N + P) + 4 * Q + 3 * nc + 2 * Q * S + 64, Ku = K * u;

  Scan ab = p;  // the magnitudes Σ|terms|
  ab.x = abs_of(p.x), ab.B = abs_of(p.B), ab.C = abs_of(p.C), ab.D = abs_of(p.D), ab.init = abs_of(p.init);
  Vec y64, f64, ymag, fmag;
  quadratic_ref(y64, f64, p);
  quadratic_ref(ymag, fmag, ab);
  const Grads r = adjoint_ref(p, dy, dfinal), mag = adjoint_ref(ab, abs_of(dy), abs_of(dfinal));
  auto scaled = [&](const Vec& m) {
    Vec t(m);
    for (auto& v : t) v *= Ku;
    return t;
  };
  const Fwd<float> f = forward<float>(p, Q);
  const Bwd<float> g = backward<float>(p, Q, f, dy, dfinal);
  EXPECT_TRUE(within(f.y, y64, scaled(ymag))) << "y";
  EXPECT_TRUE(within(f.fin, f64, scaled(fmag))) << "final state";
  EXPECT_TRUE(within(g.dx, r.dx, scaled(mag.dx))) << "dx";
  EXPECT_TRUE(within(g.dB, r.dB, scaled(mag.dB))) << "dB";
  EXPECT_TRUE(within(g.dC, r.dC, scaled(mag.dC))) << "dC";
  EXPECT_TRUE(within(g.dinit, r.dinit, scaled(mag.dinit))) << "dinitial";
  Vec bddt(p.dt.size()), bA(H, 0.0), bD(H, 0.0);
  for (int64_t b = 0; b < p.s.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t t0 = c * Q, t1 = std::min(L, t0 + Q);
        double m = 0;
        for (int64_t t = t0; t < t1; ++t) m += mag.m[(b * L + t) * H + h];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t i = (b * L + t) * H + h;
          bddt[i] = Ku * (1 + amax) * (1 + amax * dtmax) * m;
          bA[h] += p.dt[i] * Ku * (1 + amax * dtmax) * m;
        }
      }
  for (int64_t h = 0; h < H; ++h) bD[h] = Ku * mag.dD[h];
  EXPECT_TRUE(within(g.ddt, r.ddt, bddt)) << "ddt";
  EXPECT_TRUE(within(g.dA, r.dA, bA)) << "dA";
  EXPECT_TRUE(within(g.dD, r.dD, bD)) << "dD";
}

// x, B, C, dt as slices of in_proj's output row z | x | B | C | dt (z: values the scan must not read).
TEST(SsmScan, StridedInputsGiveTheContiguousResults) {
  const Scan p = standard();
  const auto& s = p.s;
  const int64_t rows = s.batch * s.len, HP = s.heads * s.head_dim, GN = s.groups * s.state, H = s.heads;
  const int64_t W = 2 * HP + 2 * GN + H, ox = HP, ob = 2 * HP, oc = ob + GN, odt = oc + GN;
  std::vector<float> wide = randn(rows * W, 600);  // z stays random
  auto x = cast<float>(p.x), B = cast<float>(p.B), C = cast<float>(p.C), dt = cast<float>(p.dt);
  auto A = cast<float>(p.A), D = cast<float>(p.D), init = cast<float>(p.init);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(&x[r * HP], HP, &wide[r * W + ox]);
    std::copy_n(&B[r * GN], GN, &wide[r * W + ob]);
    std::copy_n(&C[r * GN], GN, &wide[r * W + oc]);
    std::copy_n(&dt[r * H], H, &wide[r * W + odt]);
  }
  const cpu::ScanStrides st{W, W, W, W};
  for (int64_t Q : {3, 16}) {
    cpu::ScanSizes sq = s;
    sq.chunk = Q;
    const Fwd<float> f = forward<float>(p, Q);
    Fwd<float> w{std::vector<float>(f.y.size()), std::vector<float>(f.states.size()), std::vector<float>(f.fin.size())};
    cpu::ssd_scan_forward<float>(w.y.data(), w.states.data(), w.fin.data(), &wide[ox], &wide[odt], A.data(),
                                 &wide[ob], &wide[oc], D.data(), init.data(), sq, st);
    // Same operations in the same order on the same values: the same bits.
    EXPECT_TRUE(same_bits(w.y, f.y)) << Q;
    EXPECT_TRUE(same_bits(w.states, f.states)) << Q;
    EXPECT_TRUE(same_bits(w.fin, f.fin)) << Q;
    const Vec dy = f2d(randn(p.x.size(), 601)), dfinal = f2d(randn(p.init.size(), 602));
    const Bwd<float> g = backward<float>(p, Q, f, dy, dfinal);
    Bwd<float> gw{std::vector<float>(g.dx.size()), std::vector<float>(g.ddt.size()), std::vector<float>(g.dB.size()),
                  std::vector<float>(g.dC.size()), std::vector<float>(H), std::vector<float>(H),
                  std::vector<float>(g.dinit.size())};
    auto dyf = cast<float>(dy), dff = cast<float>(dfinal);
    cpu::ssd_scan_backward<float>(gw.dx.data(), gw.ddt.data(), gw.dB.data(), gw.dC.data(), gw.dA.data(), gw.dD.data(),
                                  gw.dinit.data(), dyf.data(), dff.data(), &wide[ox], &wide[odt], A.data(), &wide[ob],
                                  &wide[oc], D.data(), w.states.data(), sq, st);
    EXPECT_TRUE(same_bits(gw.dx, g.dx) && same_bits(gw.ddt, g.ddt) && same_bits(gw.dB, g.dB) &&
                same_bits(gw.dC, g.dC) && same_bits(gw.dA, g.dA) && same_bits(gw.dD, g.dD) &&
                same_bits(gw.dinit, g.dinit))
        << Q;
  }
}

TEST(SsmScan, SameBitsForOneAndTwoThreads) {
  const Scan p = make_scan(3, 45, 6, 7, 3, 5, 700);  // 18 (b, h) and 9 (b, g) tasks: uneven splits
  const Vec dy = f2d(randn(p.x.size(), 701)), dfinal = f2d(randn(p.init.size(), 702));
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Fwd<float> f1 = forward<float>(p, 16);
  const Bwd<float> g1 = backward<float>(p, 16, f1, dy, dfinal);
  omp_set_num_threads(2);
  const Fwd<float> f2 = forward<float>(p, 16);
  const Bwd<float> g2 = backward<float>(p, 16, f2, dy, dfinal);
  omp_set_num_threads(saved);
  EXPECT_TRUE(same_bits(f1.y, f2.y) && same_bits(f1.states, f2.states) && same_bits(f1.fin, f2.fin));
  EXPECT_TRUE(same_bits(g1.dx, g2.dx));
  EXPECT_TRUE(same_bits(g1.ddt, g2.ddt));
  EXPECT_TRUE(same_bits(g1.dB, g2.dB));
  EXPECT_TRUE(same_bits(g1.dC, g2.dC));
  EXPECT_TRUE(same_bits(g1.dA, g2.dA));
  EXPECT_TRUE(same_bits(g1.dD, g2.dD));
  EXPECT_TRUE(same_bits(g1.dinit, g2.dinit));
}

TEST(SsmScan, ParameterGradsAccumulateActivationGradsOverwrite) {
  const Scan p = standard();
  const int64_t Q = 16, H = p.s.heads;
  cpu::ScanSizes s = p.s;
  s.chunk = Q;
  const Vec dy = f2d(randn(p.x.size(), 800)), dfinal = f2d(randn(p.init.size(), 801));
  const Fwd<double> f = forward<double>(p, Q);
  const Bwd<double> g = backward<double>(p, Q, f, dy, dfinal);  // from zeroed dA, dD
  // Garbage in every output, then two calls: activation grads equal one call's, dA and dD are
  // the prefill plus twice the gradient.
  Bwd<double> h{f2d(randn(g.dx.size(), 802)), f2d(randn(g.ddt.size(), 803)), f2d(randn(g.dB.size(), 804)),
                f2d(randn(g.dC.size(), 805)),  f2d(randn(H, 806)),            f2d(randn(H, 807)),
                f2d(randn(g.dinit.size(), 808))};
  const Vec pa = h.dA, pd = h.dD;
  for (int rep = 0; rep < 2; ++rep)
    cpu::ssd_scan_backward<double>(h.dx.data(), h.ddt.data(), h.dB.data(), h.dC.data(), h.dA.data(), h.dD.data(),
                                   h.dinit.data(), dy.data(), dfinal.data(), p.x.data(), p.dt.data(), p.A.data(),
                                   p.B.data(), p.C.data(), p.D.data(), f.states.data(), s);
  EXPECT_TRUE(same_bits(h.dx, g.dx) && same_bits(h.ddt, g.ddt) && same_bits(h.dB, g.dB) && same_bits(h.dC, g.dC) &&
              same_bits(h.dinit, g.dinit));
  for (int64_t i = 0; i < H; ++i) {
    EXPECT_NEAR(h.dA[i], pa[i] + 2 * g.dA[i], 1e-13 * (std::fabs(pa[i]) + std::fabs(g.dA[i]))) << i;
    EXPECT_NEAR(h.dD[i], pd[i] + 2 * g.dD[i], 1e-13 * (std::fabs(pd[i]) + std::fabs(g.dD[i]))) << i;
  }
  // dfinal null = 0, dinitial null = not wanted.
  Bwd<double> n = g;
  std::fill(n.dA.begin(), n.dA.end(), 0.0);
  std::fill(n.dD.begin(), n.dD.end(), 0.0);
  cpu::ssd_scan_backward<double>(n.dx.data(), n.ddt.data(), n.dB.data(), n.dC.data(), n.dA.data(), n.dD.data(),
                                 nullptr, dy.data(), nullptr, p.x.data(), p.dt.data(), p.A.data(), p.B.data(),
                                 p.C.data(), p.D.data(), f.states.data(), s);
  const Grads r = adjoint_ref(p, dy, Vec(p.init.size(), 0.0));
  EXPECT_TRUE(close_norm(n.dx, r.dx, kFp64Tol));
  EXPECT_TRUE(close_norm(n.ddt, r.ddt, kFp64Tol));
}

// ---------------------------------------------------------------------------------------------
// Δ = softplus(dt_raw + dt_bias), optional clamp

double softplus_ref(double v) { return std::log1p(std::exp(v)); }

TEST(SsmDtSoftplus, ForwardBackwardMatchReferenceAndFiniteDifferences) {
  // fp32, u = 2^-24: v = dt_raw + dt_bias is rounded (|dv| <= u |v|, moving softplus by
  // σ(v) u |v|) and exp, log1p add a ulp each: |err| <= 4 u (|v| σ(v) + Δ). The gradient dΔ σ(v):
  // σ's own few ulp and (1 - σ) σ |v| u from v's rounding, below 16 u |dΔ| <= 1e-6 |dΔ|. The FD
  // of the fp64 reference (h = 1e-5) is exact to ~1e-10.
  const int64_t rows = 9, H = 5, ld = 8;
  std::vector<float> raw = randn(rows * ld, 900, 3.0f), bias = randn(H, 901), dd = randn(rows * H, 902);
  raw[0] = 30.0f, raw[1] = 1000.0f, raw[2] = -100.0f;  // large: returns the input; very negative: ~0
  std::vector<float> delta(rows * H), draw(rows * ld, 7.0f), dbias = randn(H, 903);
  const std::vector<float> dbias0 = dbias;
  cpu::dt_softplus_forward(delta.data(), raw.data(), bias.data(), rows, H, ld, 0.0f, 0.0f);
  cpu::dt_softplus_backward(draw.data(), dbias.data(), dd.data(), raw.data(), bias.data(), rows, H, ld, ld, 0.0f,
                            0.0f);
  std::vector<double> sum(H, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const double v = double(raw[r * ld + h]) + double(bias[h]);
      const double want = v > 50 ? v : softplus_ref(v);
      EXPECT_TRUE(std::isfinite(delta[r * H + h]));
      const double sig = 1 / (1 + std::exp(-v)), u = std::ldexp(1.0, -24);
      // (+1e-40: the denormal range, where fp32 keeps no relative precision)
      EXPECT_NEAR(delta[r * H + h], want, 4 * u * (std::fabs(v) * sig + want) + 1e-40) << r << "," << h;
      const double fd = (softplus_ref(v + 1e-5) - softplus_ref(v - 1e-5)) / 2e-5;
      const double gwant = v > 50 ? dd[r * H + h] : dd[r * H + h] * fd;
      EXPECT_NEAR(draw[r * ld + h], gwant, 1e-6 * (std::fabs(dd[r * H + h]) + 1e-30)) << r << "," << h;
      sum[h] += draw[r * ld + h];
    }
  EXPECT_EQ(draw[ld - 1], 7.0f);  // the padding of a strided row is left alone
  for (int64_t h = 0; h < H; ++h) EXPECT_NEAR(dbias[h], dbias0[h] + sum[h], 1e-5);
}

TEST(SsmDtSoftplus, ClampCutsValuesAndGradients) {
  const int64_t rows = 40, H = 3;
  std::vector<float> raw = randn(rows * H, 910, 3.0f), bias(H, -2.0f), dd(rows * H, 1.0f), delta(rows * H),
                     draw(rows * H);
  const float lo = 0.05f, hi = 0.5f;
  cpu::dt_softplus_forward(delta.data(), raw.data(), bias.data(), rows, H, 0, lo, hi);
  cpu::dt_softplus_backward(draw.data(), nullptr, dd.data(), raw.data(), bias.data(), rows, H, 0, 0, lo, hi);
  int below = 0, above = 0, inside = 0;
  for (int64_t i = 0; i < rows * H; ++i) {
    const double sp = softplus_ref(double(raw[i]) - 2.0);
    if (sp < lo * (1 - 1e-6)) {
      EXPECT_EQ(delta[i], lo);
      EXPECT_EQ(draw[i], 0.0f);
      ++below;
    } else if (sp > hi * (1 + 1e-6)) {
      EXPECT_EQ(delta[i], hi);
      EXPECT_EQ(draw[i], 0.0f);
      ++above;
    } else if (sp > lo * (1 + 1e-6) && sp < hi * (1 - 1e-6)) {
      EXPECT_NEAR(delta[i], sp, 1e-6 * sp);
      EXPECT_NEAR(draw[i], 1.0 / (1.0 + std::exp(2.0 - raw[i])), 1e-6);
      ++inside;
    }
  }
  EXPECT_GT(below, 0);
  EXPECT_GT(above, 0);
  EXPECT_GT(inside, 0);
}

}  // namespace
}  // namespace ff
