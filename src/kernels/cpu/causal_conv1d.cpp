#include "kernels/cpu/causal_conv1d.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"

// Forward walks rows (b, t) in parallel with the channel loop innermost (contiguous); the taps
// are read from wT [K, Ch] = wᵀ, so every inner loop is "row += tap * row". Backward runs one
// task per block of kBlock channels over every sequence and position in order, so dw and dbias
// (sums over rows) need no reduction across threads and come out the same for any thread count.

namespace ff::cpu {
namespace {

constexpr int64_t kBlock = 64;

inline float sigmoid(float u) { return 1.0f / (1.0f + std::exp(-u)); }

void check_sizes(int64_t Bs, int64_t L, int64_t Ch, int64_t K, int64_t ld, const char* what) {
  FF_CHECK(Bs >= 0 && L >= 0 && Ch > 0 && K > 0, "%s: bad sizes Bs=%lld L=%lld Ch=%lld K=%lld", what, (long long)Bs,
           (long long)L, (long long)Ch, (long long)K);
  FF_CHECK(ld >= Ch, "%s: row stride %lld < channels %lld", what, (long long)ld, (long long)Ch);
}

// wT [K, Ch] = w [Ch, K]ᵀ.
std::vector<float> taps_by_row(const float* w, int64_t Ch, int64_t K) {
  std::vector<float> wT(K * Ch);
  for (int64_t k = 0; k < Ch; ++k)
    for (int64_t j = 0; j < K; ++j) wT[j * Ch + k] = w[k * K + j];
  return wT;
}

}  // namespace

void causal_conv1d_silu_forward(float* out, float* u, const float* in, const float* w, const float* bias,
                                int64_t Bs, int64_t L, int64_t Ch, int64_t K, int64_t ld) {
  // u[t] = bias + Σ_{j: t-(K-1)+j >= 0} wT[j] ⊙ in[t-(K-1)+j];  out[t] = u[t] sigmoid(u[t]).
  ld = ld ? ld : Ch;
  check_sizes(Bs, L, Ch, K, ld, "causal_conv1d_silu_forward");
  const std::vector<float> wT = taps_by_row(w, Ch, K);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < Bs * L; ++r) {
    const int64_t t = r % L;
    float* o = out + r * Ch;
    for (int64_t k = 0; k < Ch; ++k) o[k] = bias ? bias[k] : 0.0f;
    for (int64_t j = std::max<int64_t>(0, K - 1 - t); j < K; ++j) {
      const float* x = in + (r - (K - 1) + j) * ld;
      const float* wj = wT.data() + j * Ch;
      for (int64_t k = 0; k < Ch; ++k) o[k] += wj[k] * x[k];
    }
    if (u) std::copy(o, o + Ch, u + r * Ch);
    for (int64_t k = 0; k < Ch; ++k) o[k] = o[k] * sigmoid(o[k]);
  }
}

void causal_conv1d_silu_backward(float* din, float* dw, float* dbias, const float* dout, const float* u,
                                 const float* in, const float* w, int64_t Bs, int64_t L, int64_t Ch, int64_t K,
                                 int64_t ld, int64_t ld_din) {
  // du[t] = dout[t] silu'(u[t]),  silu'(u) = σ(u) (1 + u (1 - σ(u)));
  // din[t'] = Σ_{j: t'+(K-1)-j < L} w[:, j] ⊙ du[t' + (K-1) - j]   (overwritten)
  // dw[:, j] += Σ_{b,t} du[t] ⊙ in[t-(K-1)+j],  dbias += Σ_{b,t} du[t].
  ld = ld ? ld : Ch;
  ld_din = ld_din ? ld_din : Ch;
  check_sizes(Bs, L, Ch, K, ld, "causal_conv1d_silu_backward");
  FF_CHECK(ld_din >= Ch, "causal_conv1d_silu_backward: din row stride %lld < channels %lld", (long long)ld_din,
           (long long)Ch);
  const std::vector<float> wT = taps_by_row(w, Ch, K);
  const int64_t nblocks = (Ch + kBlock - 1) / kBlock;
#pragma omp parallel
  {
    // Per thread, once per call: du of one sequence for one channel block, and dw / dbias sums.
    std::vector<float> du(L * kBlock);
    std::vector<double> aw(K * kBlock), ab(kBlock);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t k0 = blk * kBlock, nk = std::min(kBlock, Ch - k0);
      std::fill(aw.begin(), aw.end(), 0.0);
      std::fill(ab.begin(), ab.end(), 0.0);
      for (int64_t b = 0; b < Bs; ++b) {
        const int64_t r0 = b * L;
        for (int64_t t = 0; t < L; ++t) {
          const float *ur = u + (r0 + t) * Ch + k0, *gr = dout + (r0 + t) * Ch + k0;
          float* dr = du.data() + t * kBlock;
          for (int64_t k = 0; k < nk; ++k) {
            const float sg = sigmoid(ur[k]);
            dr[k] = gr[k] * sg * (1.0f + ur[k] * (1.0f - sg));
          }
        }
        for (int64_t t = 0; t < L; ++t) {
          float* di = din + (r0 + t) * ld_din + k0;
          std::fill(di, di + nk, 0.0f);
          for (int64_t j = 0; j < K; ++j) {
            const int64_t tt = t + (K - 1) - j;  // the output row that read in[t] through tap j
            if (tt >= L) continue;
            const float *wj = wT.data() + j * Ch + k0, *dr = du.data() + tt * kBlock;
            for (int64_t k = 0; k < nk; ++k) di[k] += wj[k] * dr[k];
          }
        }
        for (int64_t t = 0; t < L; ++t) {
          const float* dr = du.data() + t * kBlock;
          for (int64_t k = 0; k < nk; ++k) ab[k] += dr[k];
          for (int64_t j = std::max<int64_t>(0, K - 1 - t); j < K; ++j) {
            const float* x = in + (r0 + t - (K - 1) + j) * ld + k0;
            double* a = aw.data() + j * kBlock;
            for (int64_t k = 0; k < nk; ++k) a[k] += double(dr[k] * x[k]);
          }
        }
      }
      for (int64_t k = 0; k < nk; ++k) {
        if (dw)
          for (int64_t j = 0; j < K; ++j) dw[(k0 + k) * K + j] += static_cast<float>(aw[j * kBlock + k]);
        if (dbias) dbias[k0 + k] += static_cast<float>(ab[k]);
      }
    }
  }
}

void causal_conv1d_silu_step(float* out, float* state, const float* in, const float* w, const float* bias, int64_t Bs,
                             int64_t Ch, int64_t K, int64_t ld) {
  // state[b, k, 0..K-2] = in[t-(K-1) .. t-1] (oldest first):
  //   u = bias + Σ_{j<K-1} w[k, j] state[j] + w[k, K-1] in_t;  out = silu(u);  shift in_t into state.
  ld = ld ? ld : Ch;
  check_sizes(Bs, 1, Ch, K, ld, "causal_conv1d_silu_step");
  const int64_t S = K - 1;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < Bs; ++b)
    for (int64_t k = 0; k < Ch; ++k) {
      float* st = state + (b * Ch + k) * S;
      const float* wk = w + k * K;
      const float x = in[b * ld + k];
      float acc = bias ? bias[k] : 0.0f;
      for (int64_t j = 0; j < S; ++j) acc += wk[j] * st[j];
      acc += wk[S] * x;
      for (int64_t j = 0; j + 1 < S; ++j) st[j] = st[j + 1];
      if (S > 0) st[S - 1] = x;
      out[b * Ch + k] = acc * sigmoid(acc);
    }
}

void causal_conv1d_final_state(float* state, const float* in, int64_t Bs, int64_t L, int64_t Ch, int64_t K,
                               int64_t ld) {
  // state[b, k, j] = in[b, L-(K-1)+j, k], 0 where that position is before 0.
  ld = ld ? ld : Ch;
  check_sizes(Bs, L, Ch, K, ld, "causal_conv1d_final_state");
  const int64_t S = K - 1;
  for (int64_t b = 0; b < Bs; ++b)
    for (int64_t k = 0; k < Ch; ++k)
      for (int64_t j = 0; j < S; ++j) {
        const int64_t t = L - S + j;
        state[(b * Ch + k) * S + j] = t >= 0 ? in[(b * L + t) * ld + k] : 0.0f;
      }
}

}  // namespace ff::cpu
