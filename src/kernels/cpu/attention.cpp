#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "core/check.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vector_math.h"

// Both passes walk the query rows of one (b, head) in blocks of kRows. Under the causal mask the
// block [i0, i1) sees keys [0, off + i1) only (off = q_offset), so a block's scores are at most
// kRows x S_kv and the upper triangle is never computed. The BLAS runs single-threaded inside the
// OpenMP region.

namespace ff::cpu {
namespace {

constexpr int64_t kRows = 64;

void check_shape(const AttentionShape& s, const char* what) {
  FF_CHECK(s.B >= 0 && s.S >= 0 && s.dh > 0 && s.Hq > 0 && s.Hkv > 0,
           "%s: bad shape B=%lld S=%lld Hq=%lld Hkv=%lld dh=%lld", what, (long long)s.B,
           (long long)s.S, (long long)s.Hq, (long long)s.Hkv, (long long)s.dh);
  FF_CHECK(s.Hq % s.Hkv == 0, "%s: query heads %lld are not a multiple of KV heads %lld", what,
           (long long)s.Hq, (long long)s.Hkv);
  FF_CHECK(s.ld_q >= s.Hq * s.dh, "%s: ld_q %lld < Hq*dh = %lld", what, (long long)s.ld_q,
           (long long)(s.Hq * s.dh));
  FF_CHECK(s.ld_kv >= s.Hkv * s.dh, "%s: ld_kv %lld < Hkv*dh = %lld", what, (long long)s.ld_kv,
           (long long)(s.Hkv * s.dh));
  FF_CHECK(s.q_offset >= 0 && s.k_offset >= 0 && s.S_kv >= 0, "%s: negative offsets or key rows", what);
}

// Per-thread scratch: a block of kRows x S_kv scores (P) and, in backward, dP and D as well.
int64_t block_floats(const AttentionShape& s) {
  const int64_t Skv = s.S_kv > 0 ? s.S_kv : s.S;
  return std::min(s.S, kRows) * Skv;
}
int64_t per_thread_floats(const AttentionShape& s) { return 2 * block_floats(s) + kRows; }

// The workspace of this call: the caller's, or one owned by `own` for the call.
float* workspace_or_own(float* workspace, std::vector<float>& own, const AttentionShape& s) {
  if (workspace) return workspace;
  own.resize(static_cast<size_t>(attention_workspace_floats(s, omp_get_max_threads())));
  return own.data();
}

}  // namespace

int64_t attention_workspace_floats(const AttentionShape& s, int threads) {
  return per_thread_floats(s) * threads;
}

void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       const AttentionShape& s, float* workspace) {
  // P = softmax_j(scale q_i . k_j) over j <= i;  o_i = sum_j P_ij v_j;  lse_i = log sum_j exp(.)
  check_shape(s, "attention_forward");
  // off: query row i sees key rows j <= off + i.
  const int64_t S = s.S, Skv = s.S_kv > 0 ? s.S_kv : S, off = s.q_offset - s.k_offset;
  const int64_t dh = s.dh, group = s.Hq / s.Hkv, ld_o = s.Hq * dh;
  const int64_t tasks = s.B * s.Hq;
  std::vector<float> own;
  float* ws = workspace_or_own(workspace, own, s);
#pragma omp parallel
  {
    float* P = ws + omp_get_thread_num() * per_thread_floats(s);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / s.Hq, h = task % s.Hq, g = h / group;
      const float* qh = q + b * S * s.ld_q + h * dh;
      const float* kh = k + b * Skv * s.ld_kv + g * dh;
      const float* vh = v + b * Skv * s.ld_kv + g * dh;
      float* oh = o + b * S * ld_o + h * dh;
      float* lh = lse + (b * s.Hq + h) * S;
      for (int64_t i0 = 0; i0 < S; i0 += kRows) {
        const int64_t i1 = i0 + kRows < S ? i0 + kRows : S, rows = i1 - i0;
        const int64_t kend = std::clamp<int64_t>(off + i1, 0, Skv);
        // scores[r, j] = scale * q_{i0+r} . k_j,  j < kend   (ld = kend)
        gemm(false, true, rows, kend, dh, s.scale, qh + i0 * s.ld_q, s.ld_q, kh, s.ld_kv, 0.0f,
             P, kend);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t last = std::min(off + i0 + r, Skv - 1);  // the last key this query sees
          float* p = P + r * kend;
          if (last < 0) {  // no key here: contributes nothing
            for (int64_t j = 0; j < kend; ++j) p[j] = 0.0f;
            lh[i0 + r] = -INFINITY;
            continue;
          }
          float mx = -INFINITY;
          for (int64_t j = 0; j <= last; ++j) mx = p[j] > mx ? p[j] : mx;
          exp_shifted(p, p, mx, last + 1);
          double sum = 0.0;
          for (int64_t j = 0; j <= last; ++j) sum += p[j];
          const float inv = static_cast<float>(1.0 / sum);
          for (int64_t j = 0; j <= last; ++j) p[j] *= inv;
          for (int64_t j = last + 1; j < kend; ++j) p[j] = 0.0f;  // causal mask
          lh[i0 + r] = mx + static_cast<float>(std::log(sum));
        }
        // o[i0:i1] = P v[0:kend]
        gemm(false, false, rows, dh, kend, 1.0f, P, kend, vh, s.ld_kv, 0.0f,
             oh + i0 * ld_o, ld_o);
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* o, const float* lse,
                        const AttentionShape& s, float* workspace) {
  // forward: o_i = sum_j P_ij v_j,  P_ij = exp(scale q_i.k_j - lse_i) (j <= i, recomputed here).
  //   dv_j  = sum_i P_ij do_i                       dP_ij = do_i . v_j
  //   dS_ij = P_ij (dP_ij - D_i),  D_i = sum_j P_ij dP_ij = do_i . o_i
  //   dq_i  = scale sum_j dS_ij k_j                 dk_j  = scale sum_i dS_ij q_i
  // One task per (b, KV head): it owns dk/dv of that head and loops over the group's query heads,
  // so the group sum needs no atomics. Per task scratch: P and dP blocks of kRows x S.
  check_shape(s, "attention_backward");
  const int64_t S = s.S, Skv = s.S_kv > 0 ? s.S_kv : S, off = s.q_offset - s.k_offset;
  const int64_t dh = s.dh, group = s.Hq / s.Hkv, ld_o = s.Hq * dh;
  const int64_t tasks = s.B * s.Hkv;
  std::vector<float> own;
  float* ws = workspace_or_own(workspace, own, s);
#pragma omp parallel
  {
    float* P = ws + omp_get_thread_num() * per_thread_floats(s);
    float* dP = P + block_floats(s);
    float* D = dP + block_floats(s);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      const float* kh = k + b * Skv * s.ld_kv + g * dh;
      const float* vh = v + b * Skv * s.ld_kv + g * dh;
      float* dkh = dk + b * Skv * s.ld_kv + g * dh;
      float* dvh = dv + b * Skv * s.ld_kv + g * dh;
      for (int64_t j = 0; j < Skv; ++j)
        for (int64_t d = 0; d < dh; ++d) dkh[j * s.ld_kv + d] = dvh[j * s.ld_kv + d] = 0.0f;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const float* qh = q + b * S * s.ld_q + h * dh;
        float* dqh = dq + b * S * s.ld_q + h * dh;
        const float* oh = o + b * S * ld_o + h * dh;
        const float* doh = dout + b * S * ld_o + h * dh;
        const float* lh = lse + (b * s.Hq + h) * S;
        for (int64_t i0 = 0; i0 < S; i0 += kRows) {
          const int64_t i1 = i0 + kRows < S ? i0 + kRows : S, rows = i1 - i0;
          const int64_t kend = std::clamp<int64_t>(off + i1, 0, Skv);
          gemm(false, true, rows, kend, dh, s.scale, qh + i0 * s.ld_q, s.ld_q, kh, s.ld_kv, 0.0f,
               P, kend);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r, last = std::min(off + i, Skv - 1);
            float* p = P + r * kend;
            exp_shifted(p, p, lh[i], last + 1);
            for (int64_t j = last + 1; j < kend; ++j) p[j] = 0.0f;
            double acc = 0.0;
            for (int64_t d = 0; d < dh; ++d)
              acc += double(doh[i * ld_o + d]) * double(oh[i * ld_o + d]);
            D[r] = static_cast<float>(acc);
          }
          // dv[0:kend] += P^T do[i0:i1]
          gemm(true, false, kend, dh, rows, 1.0f, P, kend, doh + i0 * ld_o, ld_o, 1.0f, dvh,
               s.ld_kv);
          // dP = do[i0:i1] v[0:kend]^T, then dS = P (dP - D) in place in dP
          gemm(false, true, rows, kend, dh, 1.0f, doh + i0 * ld_o, ld_o, vh, s.ld_kv, 0.0f,
               dP, kend);
          for (int64_t r = 0; r < rows; ++r) {
            const float* p = P + r * kend;
            float* ds = dP + r * kend;
            for (int64_t j = 0; j < kend; ++j) ds[j] = p[j] * (ds[j] - D[r]);
          }
          // dq[i0:i1] = scale dS k[0:kend]  (overwrite);  dk[0:kend] += scale dS^T q[i0:i1]
          gemm(false, false, rows, dh, kend, s.scale, dP, kend, kh, s.ld_kv, 0.0f,
               dqh + i0 * s.ld_q, s.ld_q);
          gemm(true, false, kend, dh, rows, s.scale, dP, kend, qh + i0 * s.ld_q, s.ld_q, 1.0f,
               dkh, s.ld_kv);
        }
      }
    }
  }
}

}  // namespace ff::cpu
