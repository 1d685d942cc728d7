// bf16 compute: the conversions, the oneDNN matmul against a double-precision reference on the
// same bf16 inputs (every transpose, accumulate, rows varying at run time, empty products), the
// grouped expert GEMM against per-segment fp32 products, and a whole model in bf16 against the
// same model in fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/small_gemm_bf16.h"
#include "layers/compute.h"
#include "models/decoder_lm.h"
#include "train/objective.h"
#include "test_util.h"

namespace ff {
namespace {

std::vector<bf16_t> to_bf16(const std::vector<float>& x) {
  std::vector<bf16_t> h(x.size());
  cpu::to_bf16(h.data(), x.data(), static_cast<int64_t>(x.size()));
  return h;
}
std::vector<float> rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_to_float(float_to_bf16(x[i]));
  return r;
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
  EXPECT_EQ(float_to_bf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(3.140625f)), 3.140625f);  // exactly representable
  EXPECT_EQ(float_to_bf16(-1e-40f), 0x8000);  // subnormals flush to signed zero, as the hardware does
}

TEST(Bf16, VectorConversionEqualsScalarRounding) {
  std::vector<float> x = test::randn(1000, 1, 30.0f);  // not a multiple of 32: the tail path too
  x[5] = std::numeric_limits<float>::infinity();
  x[6] = -0.0f;
  x[7] = 1e-40f;  // subnormal
  std::vector<bf16_t> h = to_bf16(x);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(h[i], float_to_bf16(x[i])) << i << " " << x[i];
  const std::vector<float> want = rounded(x);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(bf16_to_float(h[i]), want[i]) << i;
}

// C = op(A) op(B) (+ C0) in double from the bf16-rounded operands.
std::vector<float> reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const std::vector<float>& A,
                             int64_t lda, const std::vector<float>& B, int64_t ldb, const std::vector<float>& C0,
                             int64_t ldc) {
  std::vector<float> C = C0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = C0.empty() ? 0.0 : C0[static_cast<size_t>(i * ldc + j)];
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[static_cast<size_t>(k * lda + i)] : A[static_cast<size_t>(i * lda + k)];
        const double b = tb ? B[static_cast<size_t>(j * ldb + k)] : B[static_cast<size_t>(k * ldb + j)];
        s += a * b;
      }
      if (C.empty()) C.assign(static_cast<size_t>(M * ldc), 0.0f);
      C[static_cast<size_t>(i * ldc + j)] = static_cast<float>(s);
    }
  return C;
}

struct MatmulCase {
  bool ta, tb, accumulate;
  cpu::Varying varying;
};

class MatmulTest : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(MatmulTest, MatchesDoubleReferenceOnBf16Inputs) {
  const auto [ta, tb, accumulate, varying] = GetParam();
  cpu::Matmul mm;
  // Two shapes per primitive when a dimension varies, so the cached primitive serves both.
  for (int64_t rows : {37, 70}) {
    const int64_t M = varying == cpu::Varying::k ? 24 : rows, N = 29, K = varying == cpu::Varying::k ? rows : 45;
    const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;  // padded row strides
    std::vector<float> A = rounded(test::randn(static_cast<size_t>((ta ? K : M) * lda), 2));
    std::vector<float> B = rounded(test::randn(static_cast<size_t>((tb ? N : K) * ldb), 3));
    std::vector<float> C = test::randn(static_cast<size_t>(M * ldc), 4);
    std::vector<float> want = reference(ta, tb, M, N, K, A, lda, B, ldb, accumulate ? C : std::vector<float>{}, ldc);
    std::vector<bf16_t> Ah = to_bf16(A), Bh = to_bf16(B);
    mm.run(ta, tb, M, N, K, Ah.data(), lda, Bh.data(), ldb, C.data(), ldc, accumulate, varying);
    for (int64_t i = 0; i < M; ++i)  // the padding columns of C are not part of the product
      ASSERT_TRUE(test::all_close(C.data() + i * ldc, want.data() + i * ldc, static_cast<size_t>(N), 1e-4, 1e-5))
          << "row " << i << " rows " << rows;
  }
  EXPECT_EQ(mm.cached_primitives(), varying == cpu::Varying::none ? 2u : 1u);
}

INSTANTIATE_TEST_SUITE_P(
    AllForms, MatmulTest,
    ::testing::Values(MatmulCase{false, false, false, cpu::Varying::none}, MatmulCase{false, true, false, cpu::Varying::none},
                      MatmulCase{true, false, true, cpu::Varying::none}, MatmulCase{true, true, true, cpu::Varying::none},
                      MatmulCase{false, true, false, cpu::Varying::m}, MatmulCase{false, false, true, cpu::Varying::m},
                      MatmulCase{true, false, true, cpu::Varying::k}));

TEST(Matmul, EmptyProductZeroesOrKeeps) {
  cpu::Matmul mm;
  std::vector<float> C(6, 5.0f);
  mm.run(false, false, 2, 3, 0, nullptr, 1, nullptr, 3, C.data(), 3, true);
  EXPECT_EQ(C, std::vector<float>(6, 5.0f));
  mm.run(false, false, 2, 3, 0, nullptr, 1, nullptr, 3, C.data(), 3, false);
  EXPECT_EQ(C, std::vector<float>(6, 0.0f));
}

// The grouped expert GEMMs in bf16 equal per-segment fp32 products of the bf16-rounded operands,
// with empty segments in the middle and at the ends.
TEST(Compute, GroupedExpertGemmsMatchPerSegmentProducts) {
  const int64_t in = 24, out = 40;
  const std::vector<int64_t> counts = {0, 5, 0, 17, 1, 0};
  int64_t R = 0;
  for (int64_t n : counts) R += n;
  const int64_t G = static_cast<int64_t>(counts.size()), stride = out * in;
  std::vector<float> w = rounded(test::randn(static_cast<size_t>(G * stride), 5, 0.3f));
  std::vector<float> x = rounded(test::randn(static_cast<size_t>(R * in), 6));
  std::vector<float> dy = rounded(test::randn(static_cast<size_t>(R * out), 7));
  std::vector<bf16_t> wh = to_bf16(w);
  std::vector<float> g16(w.size(), 0.5f), g32(w.size(), 0.5f);  // gradients accumulate onto 0.5

  Compute bf(Precision::bf16), fp(Precision::fp32);
  Arena arena;
  std::vector<float> y16(static_cast<size_t>(R * out)), y32(y16.size()), dx16(static_cast<size_t>(R * in)),
      dx32(dx16.size());
  Weight W16{w.data(), wh.data(), g16.data()}, W32{w.data(), nullptr, g32.data()};
  bf.grouped_forward(y16.data(), bf.operand(x.data(), R, in, arena), W16, stride, counts, in, out);
  fp.grouped_forward(y32.data(), fp.operand(x.data(), R, in, arena), W32, stride, counts, in, out);
  EXPECT_TRUE(test::all_close(y16, y32, 1e-4, 1e-4));
  bf.grouped_backward(dx16.data(), W16, stride, bf.operand(dy.data(), R, out, arena), bf.operand(x.data(), R, in, arena),
                      counts, in, out);
  fp.grouped_backward(dx32.data(), W32, stride, fp.operand(dy.data(), R, out, arena), fp.operand(x.data(), R, in, arena),
                      counts, in, out);
  EXPECT_TRUE(test::all_close(dx16, dx32, 1e-4, 1e-4));
  EXPECT_TRUE(test::all_close(g16, g32, 1e-4, 1e-4));
  EXPECT_EQ(g16[0], 0.5f);  // segment 0 has no rows: its weight gradient is untouched
  EXPECT_EQ(bf.matmul().cached_primitives(), 3u);  // forward, dx, dW: one primitive each for every segment
}

// The fused expert SwiGLU equals the unfused composition: swiglu, then the prob scaling; backward
// gives the prob gradient <dout, act> and the swiglu gradient of dout * p. Its bf16 outputs are
// the fp32 ones rounded. F = 300 covers a partial chunk.
TEST(FusedSwiglu, EqualsSwigluThenScalingForwardAndBackward) {
  const int64_t N = 5, F = 300;
  std::vector<float> in = test::randn(static_cast<size_t>(N * 2 * F), 8, 2.0f);
  std::vector<float> p = test::randn(static_cast<size_t>(N), 9);
  std::vector<float> dout = test::randn(static_cast<size_t>(N * F), 10);
  std::vector<float> act(static_cast<size_t>(N * F)), want(act.size());
  cpu::swiglu_forward(act.data(), in.data(), N, F);
  for (int64_t i = 0; i < N * F; ++i) want[i] = act[i] * p[i / F];
  std::vector<float> got(act.size());
  std::vector<bf16_t> got16(act.size());
  cpu::swiglu_scaled_forward(got.data(), nullptr, in.data(), p.data(), N, F);
  cpu::swiglu_scaled_forward(nullptr, got16.data(), in.data(), p.data(), N, F);
  EXPECT_TRUE(test::all_close(got, want, 1e-6, 1e-5));
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got16[i], float_to_bf16(got[i])) << i;
  // No prob (the dense MLP's SwiGLU): exactly swiglu_forward, rounded.
  cpu::swiglu_scaled_forward(nullptr, got16.data(), in.data(), nullptr, N, F);
  for (size_t i = 0; i < act.size(); ++i) ASSERT_EQ(got16[i], float_to_bf16(act[i])) << i;

  std::vector<float> dscaled(dout.size()), din_want(in.size()), dp_want(static_cast<size_t>(N));
  for (int64_t i = 0; i < N * F; ++i) {
    dscaled[i] = dout[i] * p[i / F];
    dp_want[i / F] += dout[i] * act[i];
  }
  cpu::swiglu_backward(din_want.data(), dscaled.data(), in.data(), N, F);
  std::vector<float> din(in.size()), dp(static_cast<size_t>(N), -7.0f);
  std::vector<bf16_t> din16(in.size());
  cpu::swiglu_scaled_backward(dp.data(), din.data(), nullptr, dout.data(), in.data(), p.data(), N, F);
  EXPECT_TRUE(test::all_close(din, din_want, 1e-6, 1e-5));
  EXPECT_TRUE(test::all_close(dp, dp_want, 1e-4, 1e-5));
  cpu::swiglu_scaled_backward(dp.data(), nullptr, din16.data(), dout.data(), in.data(), p.data(), N, F);
  for (size_t i = 0; i < din.size(); ++i) ASSERT_EQ(din16[i], float_to_bf16(din[i])) << i;

  // A bf16 pre-activation (the GEMM's bf16 result) gives exactly what its fp32 widening gives.
  std::vector<float> in_r = rounded(in);
  std::vector<bf16_t> in16 = to_bf16(in_r);
  std::vector<float> a(act.size()), b(act.size()), da(in.size()), db(in.size()), pa(N), pb(N);
  cpu::swiglu_scaled_forward(a.data(), nullptr, in_r.data(), p.data(), N, F);
  cpu::swiglu_scaled_forward(b.data(), nullptr, in16.data(), p.data(), N, F);
  EXPECT_EQ(a, b);
  cpu::swiglu_scaled_backward(pa.data(), da.data(), nullptr, dout.data(), in_r.data(), p.data(), N, F);
  cpu::swiglu_scaled_backward(pb.data(), db.data(), nullptr, dout.data(), in16.data(), p.data(), N, F);
  EXPECT_EQ(da, db);
  EXPECT_EQ(pa, pb);
}

// A bf16 result is the fp32 result rounded (within one bf16 step: the two may round from
// accumulations in a different order).
TEST(Matmul, Bf16ResultIsTheRoundedFp32Result) {
  const int64_t M = 19, N = 40, K = 33;
  std::vector<bf16_t> A = to_bf16(test::randn(static_cast<size_t>(M * K), 21));
  std::vector<bf16_t> B = to_bf16(test::randn(static_cast<size_t>(N * K), 22));
  std::vector<float> c32(static_cast<size_t>(M * N));
  std::vector<bf16_t> c16(c32.size());
  cpu::Matmul mm;
  mm.run(false, true, M, N, K, A.data(), K, B.data(), K, c32.data(), N, false);
  mm.run(false, true, M, N, K, A.data(), K, B.data(), K, c16.data(), N, cpu::Varying::m);
  for (size_t i = 0; i < c32.size(); ++i)
    ASSERT_NEAR(bf16_to_float(c16[i]), c32[i], std::fabs(c32[i]) / 128 + 1e-6) << i;
}

ModelConfig small_moe(Precision p) {
  ModelConfig c;
  c.vocab_size = 97;
  c.d_model = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 16;
  c.num_experts = 4;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 48;
  c.moe_shared_expert_hidden = 32;
  c.precision = p;
  return c;
}

// A hybrid of the same width: Mamba2 (its in_proj and out_proj GEMMs in bf16; conv, scan and
// norm in fp32), attention and MoE.
ModelConfig small_hybrid(Precision p) {
  ModelConfig c = small_moe(p);
  c.layer_pattern = "M*ME";
  c.position_embedding = PositionEmbedding::none;
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 8;
  c.mamba_groups = 2;
  c.mamba_state = 8;
  c.mamba_chunk = 5;
  return c;
}

// The same model and batch in bf16 and fp32: the loss within bf16's rounding, every gradient
// tensor pointing the same way (cosine) with a similar norm.
void expect_bf16_tracks_fp32(ModelConfig (*config)(Precision)) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM m16(config(Precision::bf16), grid, 3), m32(config(Precision::fp32), grid, 3);
  const int64_t B = 3, S = 16;
  Rng rng(9, "batch");
  std::vector<int32_t> tokens(B * S), targets(B * S);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.below(97));
  for (auto& t : targets) t = static_cast<int32_t>(rng.below(97));
  auto mb16 = m16.new_micro_batch(), mb32 = m32.new_micro_batch();
  m16.params().zero_grads();
  m32.params().zero_grads();
  const double l16 = forward_mean_ce(m16, *mb16, tokens.data(), targets.data(), B, S).loss;
  const double l32 = forward_mean_ce(m32, *mb32, tokens.data(), targets.data(), B, S).loss;
  EXPECT_NEAR(l16, l32, 5e-3 * l32);
  backward_mean_ce(m16, *mb16, 1.0f);
  backward_mean_ce(m32, *mb32, 1.0f);
  auto& p16 = m16.params().params();
  auto& p32 = m32.params().params();
  for (size_t i = 0; i < p16.size(); ++i) {
    const Param &a = p16[i], &b = p32[i];
    const double dot = test::dot(a.grad, b.grad, static_cast<size_t>(a.numel()));
    const double na = std::sqrt(test::dot(a.grad, a.grad, static_cast<size_t>(a.numel())));
    const double nb = std::sqrt(test::dot(b.grad, b.grad, static_cast<size_t>(b.numel())));
    if (nb == 0) continue;  // an expert no token chose
    // A Mamba2 per-head parameter's gradient (D, A_log, dt_bias) is one sum over every row of a
    // head, which cancels: a small difference of large sums amplifies bf16's 2^-8 relative error
    // per term by the cancellation (about 10x here), so those few-element tensors are held to a
    // cosine of 0.95 and a norm within 15%.
    const bool per_head = a.numel() <= 8;
    EXPECT_GT(dot / (na * nb), per_head ? 0.95 : 0.99) << a.name;
    EXPECT_NEAR(na / nb, 1.0, per_head ? 0.15 : 0.05) << a.name;
  }
}

TEST(Bf16Model, LossAndGradientsTrackFp32) { expect_bf16_tracks_fp32(small_moe); }
TEST(Bf16Model, HybridMambaLossAndGradientsTrackFp32) { expect_bf16_tracks_fp32(small_hybrid); }

// The GEMMs read the weights' bf16 copy, which follows the fp32 master values once the model is
// told they changed.
TEST(Bf16Model, WeightCopyFollowsTheMasterValues) {
  Communicator world = Communicator::world();
  ParallelGrid grid(world, ParallelConfig{});
  DecoderLM m(small_moe(Precision::bf16), grid, 3);
  const int64_t B = 1, S = 16;
  std::vector<int32_t> tokens(S, 5), targets(S, 7);
  auto mb = m.new_micro_batch();
  const double before = forward_mean_ce(m, *mb, tokens.data(), targets.data(), B, S).loss;
  Param* head = m.params().find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  for (int64_t i = 0; i < head->numel(); ++i) head->value[i] *= 3.0f;
  EXPECT_EQ(forward_mean_ce(m, *mb, tokens.data(), targets.data(), B, S).loss, before);  // not told yet
  m.mark_values_changed();
  EXPECT_NE(forward_mean_ce(m, *mb, tokens.data(), targets.data(), B, S).loss, before);
  EXPECT_EQ(head->value_bf16[1], float_to_bf16(head->value[1]));
}

}  // namespace
}  // namespace ff

namespace ff {
namespace {

// The attention blocks' serial bf16 GEMM against the double reference on bf16-rounded inputs,
// every transpose, odd sizes (K odd, partial panels and micro-tiles), alpha and beta.
TEST(SmallGemmBf16, MatchesDoubleReferenceOnBf16Inputs) {
  for (int form = 0; form < 4; ++form) {
    const bool ta = form & 1, tb = form & 2;
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{13, 45, 7}, {64, 96, 64}, {1, 1, 1}, {9, 33, 130}, {24, 40, 97}, {17, 75, 64}}) {
      const int64_t lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 3, ldc = N + 1;
      std::vector<float> A = rounded(test::randn(static_cast<size_t>((ta ? K : M) * lda), 11));
      std::vector<float> B = rounded(test::randn(static_cast<size_t>((tb ? N : K) * ldb), 12));
      std::vector<float> C = test::randn(static_cast<size_t>(M * ldc), 13);
      const float alpha = 0.5f, beta = form == 3 ? 0.0f : 1.5f;
      std::vector<float> want = reference(ta, tb, M, N, K, A, lda, B, ldb, std::vector<float>(), ldc);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          const size_t at = static_cast<size_t>(i * ldc + j);
          want[at] = alpha * want[at] + beta * C[at];
        }
      std::vector<float> ws(static_cast<size_t>(cpu::small_gemm_bf16_workspace(M, N, K)));
      cpu::small_gemm_bf16(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc, ws.data());
      for (int64_t i = 0; i < M; ++i)
        ASSERT_TRUE(test::all_close(C.data() + i * ldc, want.data() + i * ldc, static_cast<size_t>(N), 1e-4, 1e-5))
            << "form " << form << " M " << M << " N " << N << " K " << K << " row " << i;
    }
  }
}

}  // namespace
}  // namespace ff
