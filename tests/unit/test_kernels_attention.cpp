// Causal GQA attention: forward (o and lse) against a naive full-matrix double reference for MHA,
// GQA and MQA with odd S and dh, strided q/k/v in one fused qkv buffer; the causal property;
// backward against central finite differences of the reference; the overwrite contract.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/check.h"
#include "kernels/cpu/attention.h"
#include "test_util.h"

namespace ff {
namespace {

using test::all_close;
using test::randn;
using Vec = std::vector<double>;

// A fused [B*S, ld] buffer: q heads, then k heads, then v heads, then `pad` unused floats.
struct Fused {
  cpu::AttentionShape s;
  int64_t ld, pad;
  int64_t q_off() const { return 0; }
  int64_t k_off() const { return s.Hq * s.dh; }
  int64_t v_off() const { return (s.Hq + s.Hkv) * s.dh; }
  int64_t rows() const { return s.B * s.S; }
  int64_t size() const { return rows() * ld; }
};

Fused make_shape(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t dh, int64_t pad = 2) {
  Fused f;
  f.pad = pad;
  f.ld = (Hq + 2 * Hkv) * dh + pad;
  f.s = {B, S, Hq, Hkv, dh, f.ld, f.ld, static_cast<float>(1.0 / std::sqrt(double(dh)))};
  return f;
}

// Naive causal attention in double over the fused buffer: full S x S score matrix per head.
void attn_ref(Vec& o, Vec& lse, const Vec& qkv, const Fused& f) {
  const auto& s = f.s;
  const int64_t S = s.S, dh = s.dh, group = s.Hq / s.Hkv;
  o.assign(f.rows() * s.Hq * dh, 0.0);
  lse.assign(s.B * s.Hq * S, 0.0);
  Vec sc(S * S);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h) {
      const int64_t g = h / group;
      for (int64_t i = 0; i < S; ++i)
        for (int64_t j = 0; j < S; ++j) {
          double dotp = 0;
          for (int64_t d = 0; d < dh; ++d)
            dotp += qkv[(b * S + i) * f.ld + f.q_off() + h * dh + d] *
                    qkv[(b * S + j) * f.ld + f.k_off() + g * dh + d];
          sc[i * S + j] = j <= i ? s.scale * dotp : -INFINITY;
        }
      for (int64_t i = 0; i < S; ++i) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < S; ++j) mx = std::max(mx, sc[i * S + j]);
        for (int64_t j = 0; j < S; ++j) sum += std::exp(sc[i * S + j] - mx);
        lse[(b * s.Hq + h) * S + i] = mx + std::log(sum);
        for (int64_t j = 0; j < S; ++j) {
          const double p = std::exp(sc[i * S + j] - mx) / sum;
          for (int64_t d = 0; d < dh; ++d)
            o[(b * S + i) * s.Hq * dh + h * dh + d] +=
                p * qkv[(b * S + j) * f.ld + f.v_off() + g * dh + d];
        }
      }
    }
}

struct Fwd {
  std::vector<float> o, lse;
};
Fwd run_forward(const std::vector<float>& qkv, const Fused& f) {
  Fwd r;
  r.o.assign(f.rows() * f.s.Hq * f.s.dh, NAN);
  r.lse.assign(f.s.B * f.s.Hq * f.s.S, NAN);
  cpu::attention_forward(r.o.data(), r.lse.data(), qkv.data() + f.q_off(), qkv.data() + f.k_off(),
                         qkv.data() + f.v_off(), f.s);
  return r;
}

std::vector<float> to_f(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

struct Case {
  const char* name;
  int64_t B, S, Hq, Hkv, dh;
};
const Case kCases[] = {
    {"mha", 2, 5, 3, 3, 3},     {"gqa_4_2", 2, 5, 4, 2, 3}, {"mqa_4_1", 1, 7, 4, 1, 4},
    {"s1", 2, 1, 2, 1, 5},      {"multi_block", 1, 150, 2, 1, 8},  // > one 64-row block
};

TEST(Attention, ForwardMatchesNaiveReference) {
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    Fused f = make_shape(c.B, c.S, c.Hq, c.Hkv, c.dh);
    auto qkv = randn(f.size(), 100 + c.S, 1.5f);
    Fwd r = run_forward(qkv, f);
    Vec o, lse;
    attn_ref(o, lse, Vec(qkv.begin(), qkv.end()), f);
    EXPECT_TRUE(all_close(r.o, to_f(o), 1e-5, 1e-4));
    EXPECT_TRUE(all_close(r.lse, to_f(lse), 1e-5, 1e-5));
  }
}

TEST(Attention, OutputIsCausal) {
  Fused f = make_shape(2, 9, 4, 2, 3);
  auto qkv = randn(f.size(), 7);
  Fwd base = run_forward(qkv, f);
  const int64_t t = 4, row = f.s.Hq * f.s.dh;
  auto pert = qkv;
  for (int64_t b = 0; b < f.s.B; ++b)
    for (int64_t i = t + 1; i < f.s.S; ++i)
      for (int64_t c = 0; c < f.ld; ++c) pert[(b * f.s.S + i) * f.ld + c] += 3.0f;
  Fwd r = run_forward(pert, f);
  for (int64_t b = 0; b < f.s.B; ++b) {
    for (int64_t i = 0; i < f.s.S; ++i) {
      const float* a = base.o.data() + (b * f.s.S + i) * row;
      const float* z = r.o.data() + (b * f.s.S + i) * row;
      bool same = true;
      for (int64_t c = 0; c < row; ++c) same = same && a[c] == z[c];
      if (i <= t)
        EXPECT_TRUE(same) << "row " << i << " of sequence " << b << " saw the future";
      else
        EXPECT_FALSE(same) << "row " << i << " ignored its own perturbed inputs";
    }
  }
}

// Backward: L = <w, o>. FD of the double reference over the fused qkv buffer.
void check_backward(const Case& c, size_t stride) {
  SCOPED_TRACE(c.name);
  Fused f = make_shape(c.B, c.S, c.Hq, c.Hkv, c.dh);
  auto qkv = randn(f.size(), 200 + c.S);
  Fwd r = run_forward(qkv, f);
  auto w = randn(r.o.size(), 300 + c.S);

  // Garbage-prefilled fused gradient buffer: q/k/v columns must be overwritten, pad untouched.
  const float garbage = 1e30f;
  std::vector<float> dqkv(f.size(), garbage);
  float* base = dqkv.data();
  cpu::attention_backward(base + f.q_off(), base + f.k_off(), base + f.v_off(), w.data(),
                          qkv.data() + f.q_off(), qkv.data() + f.k_off(), qkv.data() + f.v_off(),
                          r.o.data(), r.lse.data(), f.s);

  Vec x(qkv.begin(), qkv.end()), wd(w.begin(), w.end());
  auto L = [&] {
    Vec o, lse;
    attn_ref(o, lse, x, f);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += wd[i] * o[i];
    return s;
  };
  const int64_t used = f.ld - f.pad;
  int checked = 0;
  for (int64_t i = 0; i < f.size(); ++i) {
    const int64_t col = i % f.ld;
    if (col >= used) {
      EXPECT_EQ(dqkv[i], garbage) << "wrote into the pad at " << i;
      continue;
    }
    if (size_t(i) % stride != 0) {
      EXPECT_LT(std::fabs(dqkv[i]), 1e3f) << "not overwritten at " << i;
      continue;
    }
    const double h = 1e-5, saved = x[i];
    x[i] = saved + h;
    const double up = L();
    x[i] = saved - h;
    const double down = L();
    x[i] = saved;
    const double want = (up - down) / (2 * h);
    EXPECT_NEAR(dqkv[i], want, 2e-4 + 2e-3 * std::fabs(want))
        << "row " << i / f.ld << " col " << col << " ("
        << (col < f.k_off() ? "dq" : col < f.v_off() ? "dk" : "dv") << ")";
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  for (const auto& c : kCases) check_backward(c, c.S > 64 ? 97 : 1);
}

TEST(Attention, BackwardIsDeterministicAndOverwrites) {
  Fused f = make_shape(2, 11, 4, 2, 5);
  auto qkv = randn(f.size(), 5);
  Fwd r = run_forward(qkv, f);
  auto w = randn(r.o.size(), 6);
  std::vector<float> g1(f.size(), 0.0f), g2(f.size(), -7.0f);
  for (auto* g : {&g1, &g2})
    cpu::attention_backward(g->data() + f.q_off(), g->data() + f.k_off(), g->data() + f.v_off(),
                            w.data(), qkv.data() + f.q_off(), qkv.data() + f.k_off(),
                            qkv.data() + f.v_off(), r.o.data(), r.lse.data(), f.s);
  for (int64_t i = 0; i < f.size(); ++i)
    if (i % f.ld < f.ld - f.pad) {
      EXPECT_EQ(g1[i], g2[i]) << i;
    }
}

TEST(Attention, BadShapeThrows) {
  Fused f = make_shape(1, 3, 3, 2, 4);  // 3 query heads cannot share 2 KV heads
  auto qkv = randn(f.size(), 1);
  std::vector<float> o(3 * 3 * 4), lse(3 * 3);
  try {
    cpu::attention_forward(o.data(), lse.data(), qkv.data(), qkv.data() + f.k_off(),
                           qkv.data() + f.v_off(), f.s);
    FAIL() << "expected ff::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a multiple of KV heads"), std::string::npos)
        << e.what();
  }
}

// Context parallelism computes a sequence's queries in chunks, each seeing the keys up to its own
// positions (q_offset). Chunked forward equals the rows of the whole-sequence forward, and the
// chunks' dk/dv summed equal the whole-sequence dk/dv.
TEST(Attention, QueryChunksWithOffsetsEqualTheWholeSequence) {
  const int64_t B = 2, S = 12, Hq = 4, Hkv = 2, dh = 5, ld = (Hq + 2 * Hkv) * dh, ld_o = Hq * dh;
  auto qkv = randn(static_cast<size_t>(B * S * ld), 31);
  auto dout = randn(static_cast<size_t>(B * S * ld_o), 32);
  const float* q = qkv.data();
  const float* k = q + Hq * dh;
  const float* v = k + Hkv * dh;
  cpu::AttentionShape whole{B, S, Hq, Hkv, dh, ld, ld, 0.37f};
  std::vector<float> o(static_cast<size_t>(B * S * ld_o)), lse(static_cast<size_t>(B * Hq * S));
  std::vector<float> dqkv(qkv.size());
  cpu::attention_forward(o.data(), lse.data(), q, k, v, whole);
  cpu::attention_backward(dqkv.data(), dqkv.data() + Hq * dh, dqkv.data() + (Hq + Hkv) * dh, dout.data(), q, k, v,
                          o.data(), lse.data(), whole);
  // Chunks [0, 5) and [5, 12): queries copied to their own buffers, keys / values whole.
  std::vector<float> dk_sum(qkv.size(), 0.0f);
  for (auto [c0, c1] : {std::pair<int64_t, int64_t>{0, 5}, {5, 12}}) {
    const int64_t C = c1 - c0;
    std::vector<float> qc(static_cast<size_t>(B * C * ld_o)), doc(qc.size()), oc(qc.size()), lc(static_cast<size_t>(B * Hq * C));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < ld_o; ++j) {
          qc[static_cast<size_t>((b * C + i) * ld_o + j)] = q[(b * S + c0 + i) * ld + j];
          doc[static_cast<size_t>((b * C + i) * ld_o + j)] = dout[static_cast<size_t>((b * S + c0 + i) * ld_o + j)];
        }
    cpu::AttentionShape chunk{B, C, Hq, Hkv, dh, ld_o, ld, 0.37f, S, c0};
    cpu::attention_forward(oc.data(), lc.data(), qc.data(), k, v, chunk);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < ld_o; ++j)
          EXPECT_NEAR(oc[static_cast<size_t>((b * C + i) * ld_o + j)], o[static_cast<size_t>((b * S + c0 + i) * ld_o + j)], 1e-5);
    std::vector<float> dqc(qc.size()), dkv(qkv.size());
    cpu::attention_backward(dqc.data(), dkv.data() + Hq * dh, dkv.data() + (Hq + Hkv) * dh, doc.data(), qc.data(), k, v,
                            oc.data(), lc.data(), cpu::AttentionShape{B, C, Hq, Hkv, dh, ld_o, ld, 0.37f, S, c0});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < ld_o; ++j)
          EXPECT_NEAR(dqc[static_cast<size_t>((b * C + i) * ld_o + j)], dqkv[static_cast<size_t>((b * S + c0 + i) * ld + j)], 1e-5);
    for (int64_t r = 0; r < B * S; ++r)
      for (int64_t j = Hq * dh; j < ld; ++j) dk_sum[static_cast<size_t>(r * ld + j)] += dkv[static_cast<size_t>(r * ld + j)];
  }
  for (int64_t r = 0; r < B * S; ++r)
    for (int64_t j = Hq * dh; j < ld; ++j)
      EXPECT_NEAR(dk_sum[static_cast<size_t>(r * ld + j)], dqkv[static_cast<size_t>(r * ld + j)], 1e-5);
}

}  // namespace
}  // namespace ff

namespace ff {
namespace {

// bf16 block products: on bf16-rounded q/k/v the forward matches the double reference within the
// rounding of P before P V (2^-8 relative), lse to fp32 accuracy; backward matches the fp32
// kernel's within the same budget. S = 130 spans partial blocks and panels; GQA groups of 2.
TEST(Attention, Bf16BlockProductsTrackTheReference) {
  Fused f = make_shape(2, 130, 4, 2, 24);
  std::vector<float> qkv = randn(f.size(), 77, 1.5f);
  for (auto& x : qkv) x = bf16_to_float(float_to_bf16(x));
  Fused f16 = f;
  f16.s.bf16 = true;
  const size_t n_o = static_cast<size_t>(f.rows() * f.s.Hq * f.s.dh), n_l = static_cast<size_t>(f.s.B * f.s.Hq * f.s.S);
  std::vector<float> o16(n_o), l16(n_l), o32(n_o), l32(n_l);
  const float* q = qkv.data() + f.q_off();
  const float* k = qkv.data() + f.k_off();
  const float* v = qkv.data() + f.v_off();
  cpu::attention_forward(o16.data(), l16.data(), q, k, v, f16.s);
  cpu::attention_forward(o32.data(), l32.data(), q, k, v, f.s);
  Vec o, lse;
  attn_ref(o, lse, Vec(qkv.begin(), qkv.end()), f);
  EXPECT_TRUE(all_close(o16, to_f(o), 2e-2, 1e-2));
  EXPECT_TRUE(all_close(l16, to_f(lse), 1e-4, 1e-4));

  std::vector<float> dout = randn(n_o, 78), g16(qkv.size(), 0.0f), g32(qkv.size(), 0.0f);
  auto backward = [&](const cpu::AttentionShape& s, std::vector<float>& g, const std::vector<float>& out,
                      const std::vector<float>& l) {
    cpu::attention_backward(g.data() + f.q_off(), g.data() + f.k_off(), g.data() + f.v_off(), dout.data(), q, k, v,
                            out.data(), l.data(), s);
  };
  backward(f16.s, g16, o16, l16);
  backward(f.s, g32, o32, l32);
  double scale = 0;
  for (float x : g32) scale = std::max(scale, double(std::fabs(x)));
  EXPECT_TRUE(all_close(g16, g32, 2e-2 * scale, 2e-2));
}

}  // namespace
}  // namespace ff
