#include "kernels/cpu/ssd_scan.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/vector_math.h"

// Every product below is written as a combination of rows, y += Σ_k a_k x_k, over a contiguous
// last dimension (P or N or the chunk index j), so the loop vectoriser handles it and each output
// element sums its terms in program order. The few scalar reductions (dot) are plain loops, never
// reassociated. Both together make the results independent of alignment, vector width and thread
// count: tasks are (b, h) in forward and (b, g) in backward, and a task always runs the same code
// on the same data. Scratch is allocated once per thread and call, never inside the loops.
//
// Per chunk c of n <= Q positions [t0, t0 + n) and head h (local index l, j in [0, n)):
//   a_l = Δ_l A,  s_l = Σ_{i<=l} a_i,  x̃_l = Δ_l x_l,  w_j = exp(s_{n-1} - s_j)
//   M[l, j] = (C_l · B_j) exp(s_l - s_j) for j <= l (only j <= l is ever formed: mask before exp)
//   y_l = Σ_{j<=l} M[l, j] x̃_j + exp(s_l) H_{c-1} C_l + D x_l
//   H_c = exp(s_{n-1}) H_{c-1} + Σ_j w_j x̃_j B_jᵀ
// The running state is kept transposed, HT [N, P], so that H C_l and the state update are row
// operations over P; the saved chunk states are [P, N] as the header states.

namespace ff::cpu {
namespace {

// Row strides resolved (0 -> contiguous) and heads per group.
struct Layout {
  int64_t ldx, lddt, ldb, ldc, hpg, nc;
};

Layout resolve(const ScanSizes& s, const ScanStrides& st, const char* what) {
  FF_CHECK(s.batch >= 0 && s.len >= 0 && s.heads > 0 && s.head_dim > 0 && s.groups > 0 && s.state > 0 && s.chunk > 0,
           "%s: bad sizes Bs=%lld L=%lld H=%lld P=%lld G=%lld N=%lld Q=%lld", what, (long long)s.batch,
           (long long)s.len, (long long)s.heads, (long long)s.head_dim, (long long)s.groups, (long long)s.state,
           (long long)s.chunk);
  FF_CHECK(s.heads % s.groups == 0, "%s: heads %lld are not a multiple of groups %lld", what, (long long)s.heads,
           (long long)s.groups);
  const int64_t HP = s.heads * s.head_dim, GN = s.groups * s.state;
  Layout l{st.x ? st.x : HP, st.dt ? st.dt : s.heads, st.b ? st.b : GN, st.c ? st.c : GN, s.heads / s.groups,
           s.chunks()};
  FF_CHECK(l.ldx >= HP && l.lddt >= s.heads && l.ldb >= GN && l.ldc >= GN,
           "%s: row strides x=%lld dt=%lld B=%lld C=%lld below the widths H*P=%lld H=%lld G*N=%lld", what,
           (long long)l.ldx, (long long)l.lddt, (long long)l.ldb, (long long)l.ldc, (long long)HP,
           (long long)s.heads, (long long)GN);
  return l;
}

// out[i] = exp(v[i] - shift), i < n (fp32 through the vector exp of vector_math.h).
inline void exp_row(float* out, const float* v, float shift, int64_t n) { exp_shifted(out, v, shift, n); }
inline void exp_row(double* out, const double* v, double shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(v[i] - shift);
}

// Σ_i a[i] b[i] in a fixed order (four interleaved partial sums, added at the end).
template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// y[i] += a x[i] (y and x never overlap)
template <class T>
inline void axpy(T* __restrict y, T a, const T* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y[i] += Σ_{k<K} a[k] x[k ld + i], i < n: a combination of K rows of x. Four rows per pass, so
// y goes through memory once per four terms rather than once per term (one pass per term is
// bound by the store-to-load latency of y, which is short: a row of P or N values).
template <class T>
inline void add_rows(T* __restrict y, const T* __restrict a, const T* __restrict x, int64_t ld, int64_t K,
                     int64_t n) {
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const T a0 = a[k], a1 = a[k + 1], a2 = a[k + 2], a3 = a[k + 3];
    const T *x0 = x + k * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
    for (int64_t i = 0; i < n; ++i) y[i] += (a0 * x0[i] + a1 * x1[i]) + (a2 * x2[i] + a3 * x3[i]);
  }
  for (; k < K; ++k) axpy(y, a[k], x + k * ld, n);
}

// out [cols, rows] = in [rows, cols]ᵀ (in with row stride ld_in, out contiguous).
template <class T>
void transpose(T* out, const T* in, int64_t rows, int64_t cols, int64_t ld_in) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) out[k * rows + r] = in[r * ld_in + k];
}

// The inputs as row pointers for sequence b: position t of head h / group g.
template <class T>
struct Inputs {
  const T *x, *dt, *A, *B, *C, *D;
  const ScanSizes& s;
  const Layout& ly;
  const T* xr(int64_t b, int64_t t, int64_t h) const { return x + (b * s.len + t) * ly.ldx + h * s.head_dim; }
  T dtv(int64_t b, int64_t t, int64_t h) const { return dt[(b * s.len + t) * ly.lddt + h]; }
  const T* br(int64_t b, int64_t t, int64_t g) const { return B + (b * s.len + t) * ly.ldb + g * s.state; }
  const T* cr(int64_t b, int64_t t, int64_t g) const { return C + (b * s.len + t) * ly.ldc + g * s.state; }
};

// One head's per-chunk quantities, carved from a thread's scratch: Δ, s, -s, exp(s), w [Q] and
// x̃ [Q, P].
template <class T>
struct ChunkDecay {
  T *dt, *s, *ns, *es, *w, *xt;
  static int64_t floats(const ScanSizes& s) { return 5 * s.chunk + s.chunk * s.head_dim; }
  T* carve(T* p, const ScanSizes& sz) {
    dt = p, s = dt + sz.chunk, ns = s + sz.chunk, es = ns + sz.chunk, w = es + sz.chunk, xt = w + sz.chunk;
    return xt + sz.chunk * sz.head_dim;
  }
  // s_l = Σ_{i<=l} Δ_i A (inclusive cumsum), exp(s_l), w_j = exp(s_{n-1} - s_j), x̃_l = Δ_l x_l.
  void load(const Inputs<T>& in, int64_t b, int64_t h, int64_t t0, int64_t n) {
    const int64_t P = in.s.head_dim;
    const T A = in.A[h];
    T acc = 0;
    for (int64_t l = 0; l < n; ++l) {
      dt[l] = in.dtv(b, t0 + l, h);
      acc += dt[l] * A;
      s[l] = acc;
      ns[l] = -acc;
      const T* xl = in.xr(b, t0 + l, h);
      for (int64_t p = 0; p < P; ++p) xt[l * P + p] = dt[l] * xl[p];
    }
    exp_row(es, s, T(0), n);
    exp_row(w, ns, -s[n - 1], n);
  }
};

// Gm[l, j] = C_l · B_j for j <= l (rows of stride Q), from BT [N, n] = the chunk's Bᵀ.
template <class T>
void cb_lower(T* Gm, const Inputs<T>& in, const T* BT, int64_t b, int64_t g, int64_t t0, int64_t n) {
  const int64_t N = in.s.state, Q = in.s.chunk;
  for (int64_t l = 0; l < n; ++l) {
    T* row = Gm + l * Q;
    const T* cl = in.cr(b, t0 + l, g);
    std::fill(row, row + l + 1, T(0));
    add_rows(row, cl, BT, n, N, l + 1);
  }
}

// The longest coefficient row a task gathers: max(Q, N, P).
inline int64_t coef_floats(const ScanSizes& s) { return std::max({s.chunk, s.state, s.head_dim}); }

// Forward of one (b, h) over all chunks; scratch: ChunkDecay, BT [N, Q], M [Q, Q], Lrow [Q], HT [N, P],
// coef [max(Q, N, P)].
template <class T>
int64_t forward_floats(const ScanSizes& s) {
  return ChunkDecay<T>::floats(s) + s.state * s.chunk + s.chunk * s.chunk + s.chunk + s.state * s.head_dim +
         coef_floats(s);
}

template <class T>
void forward_head(T* y, T* chunk_states, T* final_state, const T* init, const Inputs<T>& in, int64_t b, int64_t h,
                  T* scratch) {
  const ScanSizes& sz = in.s;
  const int64_t L = sz.len, H = sz.heads, P = sz.head_dim, N = sz.state, Q = sz.chunk, g = h / in.ly.hpg;
  ChunkDecay<T> cd;
  T* BT = cd.carve(scratch, sz);
  T *M = BT + N * Q, *Lrow = M + Q * Q, *HT = Lrow + Q, *coef = HT + N * P;
  if (init) transpose(HT, init + (b * H + h) * P * N, P, N, N);
  else std::fill(HT, HT + N * P, T(0));

  const T D = in.D[h];
  for (int64_t c = 0; c < in.ly.nc; ++c) {
    const int64_t t0 = c * Q, n = std::min(Q, L - t0);
    if (chunk_states) transpose(chunk_states + ((b * in.ly.nc + c) * H + h) * P * N, HT, N, P, P);  // H_{c-1}
    cd.load(in, b, h, t0, n);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < N; ++k) BT[k * n + j] = in.br(b, t0 + j, g)[k];
    // M[l, j] = (C_l · B_j) exp(s_l - s_j), j <= l
    cb_lower(M, in, BT, b, g, t0, n);
    for (int64_t l = 0; l < n; ++l) {
      exp_row(Lrow, cd.ns, -cd.s[l], l + 1);
      T* row = M + l * Q;
      for (int64_t j = 0; j <= l; ++j) row[j] *= Lrow[j];
    }
    // y_l = D x_l + Σ_{j<=l} M[l, j] x̃_j + Σ_k (exp(s_l) C_l[k]) HT[k, :]
    for (int64_t l = 0; l < n; ++l) {
      T* yl = y + ((b * L + t0 + l) * H + h) * P;
      const T* xl = in.xr(b, t0 + l, h);
      const T* cl = in.cr(b, t0 + l, g);
      for (int64_t p = 0; p < P; ++p) yl[p] = D * xl[p];
      add_rows(yl, M + l * Q, cd.xt, P, l + 1, P);
      for (int64_t k = 0; k < N; ++k) coef[k] = cd.es[l] * cl[k];
      add_rows(yl, coef, HT, P, N, P);
    }
    // H_c = exp(s_{n-1}) H_{c-1} + Σ_j w_j x̃_j B_jᵀ, row k of HT: e HT[k] + Σ_j (w_j B_j[k]) x̃_j
    const T e = cd.es[n - 1];
    for (int64_t k = 0; k < N; ++k) {
      T* hk = HT + k * P;
      for (int64_t p = 0; p < P; ++p) hk[p] *= e;
      for (int64_t j = 0; j < n; ++j) coef[j] = cd.w[j] * BT[k * n + j];
      add_rows(hk, coef, cd.xt, P, n, P);
    }
  }
  if (final_state) transpose(final_state + (b * H + h) * P * N, HT, N, P, P);
}

}  // namespace

template <class T>
void ssd_scan_forward(T* y, T* chunk_states, T* final_state, const T* x, const T* dt, const T* A, const T* B,
                      const T* C, const T* D, const T* initial_state, const ScanSizes& s, const ScanStrides& st) {
  const Layout ly = resolve(s, st, "ssd_scan_forward");
  const Inputs<T> in{x, dt, A, B, C, D, s, ly};
  const int64_t tasks = s.batch * s.heads;
#pragma omp parallel
  {
    std::vector<T> scratch(forward_floats<T>(s));  // once per thread and call
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < tasks; ++bh)
      forward_head(y, chunk_states, final_state, initial_state, in, bh / s.heads, bh % s.heads, scratch.data());
  }
}

// ---------------------------------------------------------------------------------------------
// Backward (§3.4), chunks last to first. A task is one (b, g): the group's heads run in order
// h = g·H/G, ..., each carrying dH [P, N] (the gradient of the state leaving the current chunk),
// and write their dB, dC contributions straight into the group's rows, so the sums over heads
// are race-free and in a fixed order. With upstream dY, per chunk and head:
//   off-diagonal  dC_l += exp(s_l) Hᵀ dY_l,  ds_l += exp(s_l) <dY_l, H C_l>,
//                 dH_{c-1} = exp(s_{n-1}) dH_c + Σ_l exp(s_l) dY_l C_lᵀ,
//                 ds_{n-1} += exp(s_{n-1}) <dH_c, H_{c-1}>        (H = H_{c-1}, the saved state)
//   chunk state   u_j = dH_c B_j,  dx̃_j += w_j u_j,  dB_j += w_j dH_cᵀ x̃_j,
//                 g_j = w_j <x̃_j, u_j>,  ds_{n-1} += g_j,  ds_j -= g_j
//   diagonal      dM[l, j] = <dY_l, x̃_j>,  dx̃_j += Σ_{l>=j} M[l, j] dY_l,
//                 dG[l, j] += dM[l, j] L[l, j] (summed over the group's heads, then
//                 dC_l += Σ_j dG[l, j] B_j,  dB_j += Σ_l dG[l, j] C_l),
//                 E = dM ⊙ M:  ds_l += Σ_j E[l, j],  ds_j -= Σ_l E[l, j]
//   decays        da_i = Σ_{l>=i} ds_l,  dΔ_i = A da_i + <dx̃_i, x_i>,  dA += Σ_i Δ_i da_i
//   inputs        dx_i = Δ_i dx̃_i + D dY_i,  dD += <dY_i, x_i>

namespace {

template <class T>
struct Grads {
  T *dx, *ddt, *dB, *dC, *dA_part, *dD_part;  // dA_part, dD_part [Bs, H]: one slot per task head
  const T *dy, *chunk_states;
};

// Per-thread scratch of one (b, g) task, carved from one buffer.
template <class T>
struct BackScratch {
  ChunkDecay<T> cd;
  T *BT, *Gm, *dG, *Lm, *M, *dM, *xtT, *dxt, *ds, *ecol, *tmp, *u, *coef, *HT, *dHT, *dH;
  static int64_t floats(const ScanSizes& s) {
    const int64_t Q = s.chunk, P = s.head_dim, N = s.state;
    return ChunkDecay<T>::floats(s) + N * Q + 5 * Q * Q + 2 * P * Q + 2 * Q + N + P + coef_floats(s) +
           2 * N * P + (s.heads / s.groups) * P * N;
  }
  explicit BackScratch(T* p, const ScanSizes& s) {
    const int64_t Q = s.chunk, P = s.head_dim, N = s.state;
    BT = cd.carve(p, s);
    Gm = BT + N * Q, dG = Gm + Q * Q, Lm = dG + Q * Q, M = Lm + Q * Q, dM = M + Q * Q;
    xtT = dM + Q * Q, dxt = xtT + P * Q, ds = dxt + Q * P, ecol = ds + Q, tmp = ecol + Q, u = tmp + N;
    coef = u + P, HT = coef + coef_floats(s), dHT = HT + N * P, dH = dHT + N * P;  // dH: [H/G, P, N], one per head of the group
  }
};

// One head h, chunk c = [t0, t0 + n). dH [P, N]: dH_c on entry, dH_{c-1} on return.
template <class T>
void backward_chunk_head(const Grads<T>& gr, const Inputs<T>& in, BackScratch<T>& w, T* dH, int64_t b, int64_t h,
                         int64_t c, int64_t t0, int64_t n) {
  const ScanSizes& sz = in.s;
  const int64_t L = sz.len, H = sz.heads, P = sz.head_dim, N = sz.state, Q = sz.chunk, G = sz.groups;
  const int64_t g = h / in.ly.hpg;
  const T A = in.A[h], D = in.D[h];
  const T* Hs = gr.chunk_states + ((b * in.ly.nc + c) * H + h) * P * N;  // H_{c-1} [P, N]
  ChunkDecay<T>& cd = w.cd;
  cd.load(in, b, h, t0, n);
  auto dyr = [&](int64_t l) { return gr.dy + ((b * L + t0 + l) * H + h) * P; };
  auto dbr = [&](int64_t l) { return gr.dB + ((b * L + t0 + l) * G + g) * N; };
  auto dcr = [&](int64_t l) { return gr.dC + ((b * L + t0 + l) * G + g) * N; };
  std::fill(w.ds, w.ds + n, T(0));
  std::fill(w.dxt, w.dxt + n * P, T(0));
  const T e = cd.es[n - 1];

  // Off-diagonal: tmp = exp(s_l) Hᵀ dY_l [N];  dC_l += tmp;  ds_l += <C_l, tmp>.
  for (int64_t l = 0; l < n; ++l) {
    const T* dyl = dyr(l);
    std::fill(w.tmp, w.tmp + N, T(0));
    for (int64_t p = 0; p < P; ++p) w.coef[p] = cd.es[l] * dyl[p];
    add_rows(w.tmp, w.coef, Hs, N, P, N);
    axpy(dcr(l), T(1), w.tmp, N);
    w.ds[l] += dot(in.cr(b, t0 + l, g), w.tmp, N);
  }
  // State recurrence: ds_{n-1} += e <dH_c, H_{c-1}>.
  w.ds[n - 1] += e * dot(dH, Hs, P * N);
  // Chunk state, dS = dH_c: u_j = dH_c B_j (rows of dHT), dx̃_j += w_j u_j, dB_j += w_j dH_cᵀ x̃_j.
  transpose(w.dHT, dH, P, N, N);
  for (int64_t j = 0; j < n; ++j) {
    const T* bj = in.br(b, t0 + j, g);
    const T* xtj = cd.xt + j * P;
    std::fill(w.u, w.u + P, T(0));
    add_rows(w.u, bj, w.dHT, P, N, P);
    const T gj = cd.w[j] * dot(xtj, w.u, P);
    w.ds[n - 1] += gj;
    w.ds[j] -= gj;
    axpy(w.dxt + j * P, cd.w[j], w.u, P);
    T* dbj = dbr(j);
    for (int64_t p = 0; p < P; ++p) w.coef[p] = cd.w[j] * xtj[p];
    add_rows(dbj, w.coef, dH, N, P, N);
  }
  // dH_{c-1} = e dH_c + Σ_l exp(s_l) dY_l C_lᵀ (row p: Σ_l (exp(s_l) dY_l[p]) C_l).
  for (int64_t i = 0; i < P * N; ++i) dH[i] *= e;
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t l = 0; l < n; ++l) w.coef[l] = cd.es[l] * dyr(l)[p];
    add_rows(dH + p * N, w.coef, in.cr(b, t0, g), in.ly.ldc, n, N);
  }

  // Diagonal: L[l, j] = exp(s_l - s_j), M = Gm ⊙ L, dM[l, j] = <dY_l, x̃_j> (rows of x̃ᵀ).
  transpose(w.xtT, cd.xt, n, P, P);
  for (int64_t l = 0; l < n; ++l) {
    T *Ll = w.Lm + l * Q, *Ml = w.M + l * Q, *dMl = w.dM + l * Q;
    const T* Gl = w.Gm + l * Q;
    exp_row(Ll, cd.ns, -cd.s[l], l + 1);
    for (int64_t j = 0; j <= l; ++j) Ml[j] = Gl[j] * Ll[j];
    std::fill(dMl, dMl + l + 1, T(0));
    const T* dyl = dyr(l);
    add_rows(dMl, dyl, w.xtT, n, P, l + 1);
  }
  // dx̃_j += Σ_{l>=j} M[l, j] dY_l.
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t l = j; l < n; ++l) w.coef[l - j] = w.M[l * Q + j];
    add_rows(w.dxt + j * P, w.coef, dyr(j), H * P, n - j, P);
  }
  // dG += dM ⊙ L; E = dM ⊙ M (in place of dM); ds_l += Σ_j E[l, j]; ds_j -= Σ_l E[l, j].
  std::fill(w.ecol, w.ecol + n, T(0));
  for (int64_t l = 0; l < n; ++l) {
    T *dMl = w.dM + l * Q, *dGl = w.dG + l * Q;
    const T *Ll = w.Lm + l * Q, *Ml = w.M + l * Q;
    for (int64_t j = 0; j <= l; ++j) {
      dGl[j] += dMl[j] * Ll[j];
      dMl[j] *= Ml[j];
      w.ecol[j] += dMl[j];
    }
    T rs = 0;
    for (int64_t j = 0; j <= l; ++j) rs += dMl[j];
    w.ds[l] += rs;
  }
  for (int64_t j = 0; j < n; ++j) w.ds[j] -= w.ecol[j];

  // Decays and inputs: da_i = Σ_{l>=i} ds_l, dΔ_i = A da_i + <dx̃_i, x_i>, dx_i = Δ_i dx̃_i + D dY_i.
  T da = 0, dA = 0, dD = 0;
  for (int64_t i = n - 1; i >= 0; --i) {
    da += w.ds[i];
    const T* xi = in.xr(b, t0 + i, h);
    const T* dyi = dyr(i);
    const T* dxti = w.dxt + i * P;
    T* dxi = gr.dx + ((b * L + t0 + i) * H + h) * P;
    gr.ddt[(b * L + t0 + i) * H + h] = A * da + dot(dxti, xi, P);
    for (int64_t p = 0; p < P; ++p) dxi[p] = cd.dt[i] * dxti[p] + D * dyi[p];
    dA += cd.dt[i] * da;
    dD += dot(dyi, xi, P);
  }
  gr.dA_part[b * H + h] += dA;
  gr.dD_part[b * H + h] += dD;
}

// All chunks of one (b, g), last to first.
template <class T>
void backward_group(const Grads<T>& gr, T* dinitial, const T* dfinal, const Inputs<T>& in, BackScratch<T>& w,
                    int64_t b, int64_t g) {
  const ScanSizes& sz = in.s;
  const int64_t L = sz.len, H = sz.heads, P = sz.head_dim, N = sz.state, Q = sz.chunk, G = sz.groups;
  const int64_t hpg = in.ly.hpg;
  for (int64_t t = 0; t < L; ++t) {  // dB, dC are overwritten: zero the group's rows first
    std::fill(gr.dB + ((b * L + t) * G + g) * N, gr.dB + ((b * L + t) * G + g + 1) * N, T(0));
    std::fill(gr.dC + ((b * L + t) * G + g) * N, gr.dC + ((b * L + t) * G + g + 1) * N, T(0));
  }
  for (int64_t hh = 0; hh < hpg; ++hh) {
    T* dH = w.dH + hh * P * N;
    const int64_t h = g * hpg + hh;
    if (dfinal) std::copy(dfinal + (b * H + h) * P * N, dfinal + (b * H + h + 1) * P * N, dH);
    else std::fill(dH, dH + P * N, T(0));
    gr.dA_part[b * H + h] = 0;
    gr.dD_part[b * H + h] = 0;
  }
  for (int64_t c = in.ly.nc - 1; c >= 0; --c) {
    const int64_t t0 = c * Q, n = std::min(Q, L - t0);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < N; ++k) w.BT[k * n + j] = in.br(b, t0 + j, g)[k];
    cb_lower(w.Gm, in, w.BT, b, g, t0, n);
    for (int64_t l = 0; l < n; ++l) std::fill(w.dG + l * Q, w.dG + l * Q + l + 1, T(0));
    for (int64_t hh = 0; hh < hpg; ++hh) backward_chunk_head(gr, in, w, w.dH + hh * P * N, b, g * hpg + hh, c, t0, n);
    // The group's dG: dC_l += Σ_{j<=l} dG[l, j] B_j, dB_j += Σ_{l>=j} dG[l, j] C_l.
    for (int64_t l = 0; l < n; ++l)
      add_rows(gr.dC + ((b * L + t0 + l) * G + g) * N, w.dG + l * Q, in.br(b, t0, g), in.ly.ldb, l + 1, N);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t l = j; l < n; ++l) w.coef[l - j] = w.dG[l * Q + j];
      add_rows(gr.dB + ((b * L + t0 + j) * G + g) * N, w.coef, in.cr(b, t0 + j, g), in.ly.ldc, n - j, N);
    }
  }
  if (dinitial)
    for (int64_t hh = 0; hh < hpg; ++hh)
      std::copy(w.dH + hh * P * N, w.dH + (hh + 1) * P * N, dinitial + (b * H + g * hpg + hh) * P * N);
}

}  // namespace

template <class T>
void ssd_scan_backward(T* dx, T* ddt, T* dB, T* dC, T* dA, T* dD, T* dinitial, const T* dy, const T* dfinal,
                       const T* x, const T* dt, const T* A, const T* B, const T* C, const T* D,
                       const T* chunk_states, const ScanSizes& s, const ScanStrides& st) {
  const Layout ly = resolve(s, st, "ssd_scan_backward");
  const Inputs<T> in{x, dt, A, B, C, D, s, ly};
  const int64_t H = s.heads, tasks = s.batch * s.groups;
  std::vector<T> part(2 * s.batch * H);  // per (b, h) sums of dA and dD, reduced below in b order
  const Grads<T> gr{dx, ddt, dB, dC, part.data(), part.data() + s.batch * H, dy, chunk_states};
#pragma omp parallel
  {
    std::vector<T> buf(BackScratch<T>::floats(s));  // once per thread and call
    BackScratch<T> w(buf.data(), s);
#pragma omp for schedule(static)
    for (int64_t bg = 0; bg < tasks; ++bg) backward_group(gr, dinitial, dfinal, in, w, bg / s.groups, bg % s.groups);
  }
  for (int64_t h = 0; h < H; ++h) {
    T sa = 0, sd = 0;
    for (int64_t b = 0; b < s.batch; ++b) sa += gr.dA_part[b * H + h], sd += gr.dD_part[b * H + h];
    dA[h] += sa;
    dD[h] += sd;
  }
}

// ---------------------------------------------------------------------------------------------
// Sequential recurrence (reference and decode step): per (b, h) and t,
//   S = exp(Δ_t A) S + (Δ_t x_t) B_tᵀ,  y_t = S C_t + D x_t,  S [P, N] in place in `state`.

template <class T>
void ssd_scan_sequential(T* y, T* state, const T* x, const T* dt, const T* A, const T* B, const T* C, const T* D,
                         const ScanSizes& s, const ScanStrides& st) {
  const Layout ly = resolve(s, st, "ssd_scan_sequential");
  const Inputs<T> in{x, dt, A, B, C, D, s, ly};
  const int64_t H = s.heads, P = s.head_dim, N = s.state, tasks = s.batch * H;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < tasks; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / ly.hpg;
    T* S = state + bh * P * N;
    for (int64_t t = 0; t < s.len; ++t) {
      const T d = in.dtv(b, t, h), decay = std::exp(d * A[h]);
      const T *xt = in.xr(b, t, h), *bt = in.br(b, t, g), *ct = in.cr(b, t, g);
      T* yt = y + ((b * s.len + t) * H + h) * P;
      for (int64_t p = 0; p < P; ++p) {
        T* sp = S + p * N;
        const T u = d * xt[p];
        for (int64_t k = 0; k < N; ++k) sp[k] = decay * sp[k] + u * bt[k];
        yt[p] = dot(sp, ct, N) + D[h] * xt[p];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Δ = softplus(v), v = dt_raw + dt_bias: log1p(exp(v)), and v itself above 20 (where the two
// agree to fp32 precision and exp would lose the input). dΔ/dv = sigmoid(v). With dt_max > 0 the
// result is clamped to [dt_min, dt_max] and the gradient is 0 where the clamp acts.

namespace {

inline float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }
inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

}  // namespace

void dt_softplus_forward(float* delta, const float* dt_raw, const float* dt_bias, int64_t rows, int64_t H,
                         int64_t ld, float dt_min, float dt_max) {
  const int64_t ldi = ld ? ld : H;
  FF_CHECK(ldi >= H, "dt_softplus_forward: row stride %lld < H = %lld", (long long)ldi, (long long)H);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) {
      float d = softplus(dt_raw[r * ldi + h] + (dt_bias ? dt_bias[h] : 0.0f));
      if (dt_max > 0) d = std::min(std::max(d, dt_min), dt_max);
      delta[r * H + h] = d;
    }
}

void dt_softplus_backward(float* ddt_raw, float* ddt_bias, const float* ddelta, const float* dt_raw,
                          const float* dt_bias, int64_t rows, int64_t H, int64_t ld_in, int64_t ld_out, float dt_min,
                          float dt_max) {
  const int64_t ldi = ld_in ? ld_in : H, ldo = ld_out ? ld_out : H;
  FF_CHECK(ldi >= H && ldo >= H, "dt_softplus_backward: row strides %lld, %lld < H = %lld", (long long)ldi,
           (long long)ldo, (long long)H);
  // d dt_raw = dΔ sigmoid(v), 0 where clamped.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const float v = dt_raw[r * ldi + h] + (dt_bias ? dt_bias[h] : 0.0f);
      float g = ddelta[r * H + h] * sigmoid(v);
      if (dt_max > 0) {
        const float d = softplus(v);
        if (d < dt_min || d > dt_max) g = 0.0f;
      }
      ddt_raw[r * ldo + h] = g;
    }
  if (!ddt_bias) return;  // a frozen bias
  // d dt_bias += Σ_rows d dt_raw, in row order (deterministic).
  std::vector<double> acc(H, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) acc[h] += ddt_raw[r * ldo + h];
  for (int64_t h = 0; h < H; ++h) ddt_bias[h] += static_cast<float>(acc[h]);
}

#define FF_SSD_INSTANTIATE(T)                                                                                      \
  template void ssd_scan_forward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,         \
                                    const T*, const ScanSizes&, const ScanStrides&);                                \
  template void ssd_scan_backward<T>(T*, T*, T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*,          \
                                     const T*, const T*, const T*, const T*, const T*, const ScanSizes&,           \
                                     const ScanStrides&);                                                          \
  template void ssd_scan_sequential<T>(T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,         \
                                       const ScanSizes&, const ScanStrides&);
FF_SSD_INSTANTIATE(float)
FF_SSD_INSTANTIATE(double)
#undef FF_SSD_INSTANTIATE

}  // namespace ff::cpu
