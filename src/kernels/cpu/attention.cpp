#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "core/check.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/small_gemm_bf16.h"
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
// bf16 block products: K^T, K, V and V^T of one head packed once per task, and the products' own
// packing scratch (their A operand, and the small per-block B of dV / dK).
int64_t bf16_floats(const AttentionShape& s) {
  if (!s.bf16) return 0;
  const int64_t Skv = s.S_kv > 0 ? s.S_kv : s.S, rows = std::min(s.S, kRows);
  const int64_t head = std::max(packed_b_floats(s.dh, Skv), packed_b_floats(Skv, s.dh));
  const int64_t products = std::max({small_gemm_bf16_a_workspace(rows, std::max(Skv, s.dh)),
                                     small_gemm_bf16_workspace(Skv, s.dh, rows)});
  return 4 * head + products;
}
int64_t per_thread_floats(const AttentionShape& s) { return 2 * block_floats(s) + kRows + bf16_floats(s); }

// The five block products of one KV head (keys kh, values vh: Skv rows of stride ld_kv), in fp32
// through the BLAS, or on bf16-rounded operands with the head's K^T, K, V and V^T packed once.
class HeadProducts {
 public:
  HeadProducts(const AttentionShape& s, float* scratch) : s_(s), Skv_(s.S_kv > 0 ? s.S_kv : s.S) {
    if (!s.bf16) return;
    const int64_t head = std::max(packed_b_floats(s.dh, Skv_), packed_b_floats(Skv_, s.dh));
    kt_ = scratch;
    k_ = kt_ + head;
    v_ = k_ + head;
    vt_ = v_ + head;
    work_ = vt_ + head;
  }
  // A new head. Forward needs K^T and V, backward K^T, K and V^T.
  void load(const float* kh, const float* vh, bool backward) {
    kh_ = kh;
    vh_ = vh;
    if (!s_.bf16) return;
    pack_b_bf16(kt_, true, kh, s_.ld_kv, s_.dh, Skv_);
    if (backward) {
      pack_b_bf16(k_, false, kh, s_.ld_kv, Skv_, s_.dh);
      pack_b_bf16(vt_, true, vh, s_.ld_kv, s_.dh, Skv_);
    } else {
      pack_b_bf16(v_, false, vh, s_.ld_kv, Skv_, s_.dh);
    }
  }
  // out[rows, kend] = alpha x[rows, dh] K[0:kend]^T
  void times_kt(int64_t rows, int64_t kend, float alpha, const float* x, int64_t ldx, float* out) {
    if (s_.bf16)
      small_gemm_bf16_packed(false, rows, kend, s_.dh, alpha, x, ldx, kt_, s_.dh, 0.0f, out, kend, work_);
    else
      gemm(false, true, rows, kend, s_.dh, alpha, x, ldx, kh_, s_.ld_kv, 0.0f, out, kend);
  }
  // out[rows, kend] = x[rows, dh] V[0:kend]^T
  void times_vt(int64_t rows, int64_t kend, const float* x, int64_t ldx, float* out) {
    if (s_.bf16)
      small_gemm_bf16_packed(false, rows, kend, s_.dh, 1.0f, x, ldx, vt_, s_.dh, 0.0f, out, kend, work_);
    else
      gemm(false, true, rows, kend, s_.dh, 1.0f, x, ldx, vh_, s_.ld_kv, 0.0f, out, kend);
  }
  // out[rows, dh] = alpha p[rows, kend] V[0:kend] (or K[0:kend] when keys), overwritten
  void times_values(int64_t rows, int64_t kend, float alpha, const float* p, float* out, int64_t ld_out,
                    bool keys = false) {
    if (s_.bf16)
      small_gemm_bf16_packed(false, rows, s_.dh, kend, alpha, p, kend, keys ? k_ : v_, Skv_, 0.0f, out, ld_out, work_);
    else
      gemm(false, false, rows, s_.dh, kend, alpha, p, kend, keys ? kh_ : vh_, s_.ld_kv, 0.0f, out, ld_out);
  }
  // acc[kend, dh] += alpha p[rows, kend]^T x[rows, dh]   (dV, dK)
  void accumulate_transposed(int64_t rows, int64_t kend, float alpha, const float* p, const float* x, int64_t ldx,
                             float* acc) {
    if (s_.bf16)
      small_gemm_bf16(true, false, kend, s_.dh, rows, alpha, p, kend, x, ldx, 1.0f, acc, s_.ld_kv, work_);
    else
      gemm(true, false, kend, s_.dh, rows, alpha, p, kend, x, ldx, 1.0f, acc, s_.ld_kv);
  }

 private:
  const AttentionShape& s_;
  int64_t Skv_;
  const float *kh_ = nullptr, *vh_ = nullptr;
  float *kt_ = nullptr, *k_ = nullptr, *v_ = nullptr, *vt_ = nullptr, *work_ = nullptr;
};

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
    float* inv_sum = P + 2 * block_floats(s);  // [kRows] 1 / (sum of each row's exponentials)
    HeadProducts products(s, inv_sum + kRows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / s.Hq, h = task % s.Hq, g = h / group;
      const float* qh = q + b * S * s.ld_q + h * dh;
      products.load(k + b * Skv * s.ld_kv + g * dh, v + b * Skv * s.ld_kv + g * dh, false);
      float* oh = o + b * S * ld_o + h * dh;
      float* lh = lse + (b * s.Hq + h) * S;
      for (int64_t i0 = 0; i0 < S; i0 += kRows) {
        const int64_t i1 = i0 + kRows < S ? i0 + kRows : S, rows = i1 - i0;
        const int64_t kend = std::clamp<int64_t>(off + i1, 0, Skv);
        // scores[r, j] = scale * q_{i0+r} . k_j,  j < kend   (ld = kend)
        products.times_kt(rows, kend, s.scale, qh + i0 * s.ld_q, s.ld_q, P);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t last = std::min(off + i0 + r, Skv - 1);  // the last key this query sees
          float* p = P + r * kend;
          if (last < 0) {  // no key here: contributes nothing
            for (int64_t j = 0; j < kend; ++j) p[j] = 0.0f;
            lh[i0 + r] = -INFINITY;
            inv_sum[r] = 0.0f;
            continue;
          }
          // P is left unnormalised (max entry 1); o's rows are divided by the sums after P V.
          const float mx = max_value(p, last + 1);
          const double sum = exp_shifted_sum(p, p, mx, last + 1);
          for (int64_t j = last + 1; j < kend; ++j) p[j] = 0.0f;  // causal mask
          inv_sum[r] = static_cast<float>(1.0 / sum);
          lh[i0 + r] = mx + static_cast<float>(std::log(sum));
        }
        // o[i0:i1] = P v[0:kend]
        products.times_values(rows, kend, 1.0f, P, oh + i0 * ld_o, ld_o);
        for (int64_t r = 0; r < rows; ++r) {
          float* orow = oh + (i0 + r) * ld_o;
#pragma omp simd
          for (int64_t d = 0; d < dh; ++d) orow[d] *= inv_sum[r];
        }
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
    HeadProducts products(s, D + kRows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      products.load(k + b * Skv * s.ld_kv + g * dh, v + b * Skv * s.ld_kv + g * dh, true);
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
          products.times_kt(rows, kend, s.scale, qh + i0 * s.ld_q, s.ld_q, P);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r, last = std::min(off + i, Skv - 1);
            float* p = P + r * kend;
            exp_shifted(p, p, lh[i], last + 1);
            for (int64_t j = last + 1; j < kend; ++j) p[j] = 0.0f;
            float acc = 0.0f;  // dh terms: fp32 is exact enough, and vectorises
#pragma omp simd reduction(+ : acc)
            for (int64_t d = 0; d < dh; ++d) acc += doh[i * ld_o + d] * oh[i * ld_o + d];
            D[r] = acc;
          }
          // dv[0:kend] += P^T do[i0:i1]
          products.accumulate_transposed(rows, kend, 1.0f, P, doh + i0 * ld_o, ld_o, dvh);
          // dP = do[i0:i1] v[0:kend]^T, then dS = P (dP - D) in place in dP
          products.times_vt(rows, kend, doh + i0 * ld_o, ld_o, dP);
          for (int64_t r = 0; r < rows; ++r) {
            const float* p = P + r * kend;
            float* ds = dP + r * kend;
            for (int64_t j = 0; j < kend; ++j) ds[j] = p[j] * (ds[j] - D[r]);
          }
          // dq[i0:i1] = scale dS k[0:kend]  (overwrite);  dk[0:kend] += scale dS^T q[i0:i1]
          products.times_values(rows, kend, s.scale, dP, dqh + i0 * s.ld_q, s.ld_q, true);
          products.accumulate_transposed(rows, kend, s.scale, dP, qh + i0 * s.ld_q, s.ld_q, dkh);
        }
      }
    }
  }
}

}  // namespace ff::cpu
