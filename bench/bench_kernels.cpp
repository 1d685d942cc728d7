// Kernel benchmarks against this machine's roofline (Google Benchmark). Every benchmark reports
// its achieved rate and its fraction of a ceiling measured in this binary at start:
//   compute-bound kernels  TFLOP/s, of_ceiling    against ff::measure_gemm_tflops of the same
//                                                 precision (fp32: OpenBLAS sgemm, bf16: oneDNN
//                                                 matmul) on the current OpenMP thread count;
//   memory-bound kernels   GB/s, of_bandwidth     against a STREAM triad (BM_MemoryBandwidthTriad).
// Shapes are those of the moe-small preset: vocab V = 8192, d_model D = 512, 8 query and 4 KV heads
// of dh = 64, 8 experts top-2 of hidden F = 1408 (SwiGLU), seq 512 x micro-batch 8 = N = 4096
// tokens, so the experts see R = 2N = 8192 rows.
//   OMP_NUM_THREADS=2 ./build/fivefold_kernel_bench [--benchmark_filter=Grouped]
// Bytes are counted as STREAM does: each array read or written counts its size once per pass
// (read-modify-write twice); the write-allocate read of an output is not counted.
// Every benchmark calls its kernel once untimed first (oneDNN code generation, first touch of the
// outputs); rates are those of the mean iteration, the ceilings the best of a few runs.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/softmax_ce.h"
#include "layers/compute.h"
#include "train/flops.h"

namespace {

using ff::Precision;

// moe-small.
constexpr int64_t kTokens = 4096, kModel = 512, kVocab = 8192;
constexpr int64_t kHeads = 8, kKvHeads = 4, kHeadDim = 64;
constexpr int64_t kExperts = 8, kExpertHidden = 1408, kExpertRows = 2 * kTokens;
constexpr int64_t kBig = int64_t(64) << 20;  // 64M values: the flat buffers of the memory-bound kernels
constexpr int kIterations = 5;

// ---------------------------------------------------------------------------------------------
// Buffers: filled in parallel (so each page is first touched by the threads that use it) with
// values uniform in [lo, hi) from a hash of the index.

using Floats = std::unique_ptr<float[]>;
using Halves = std::unique_ptr<ff::bf16_t[]>;

uint64_t mix(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

Floats uniform(int64_t n, float lo, float hi, uint64_t seed) {
  Floats p(new float[static_cast<size_t>(n)]);
  float* d = p.get();
  const float scale = (hi - lo) / 16777216.0f;  // 24 random bits
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    d[i] = lo + scale * static_cast<float>(mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i)) >> 40);
  return p;
}
Floats zeros(int64_t n) { return uniform(n, 0.0f, 0.0f, 0); }

Halves bf16_copy(const float* x, int64_t n) {
  Halves p(new ff::bf16_t[static_cast<size_t>(n)]);
  ff::cpu::to_bf16(p.get(), x, n);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Timing and counters.

// Calls body once untimed, then once per benchmark iteration; returns the mean seconds of a call.
template <class Body>
double mean_seconds(benchmark::State& state, Body&& body) {
  body();
  double total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return total / static_cast<double>(state.iterations());
}

// One pass of the STREAM triad a[i] = b[i] + s c[i]; returns its seconds.
double triad_pass(float* a, const float* b, const float* c, int64_t n) {
  const float s = 3.0f;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
constexpr double kTriadBytesPerElement = 3 * 4;  // read b and c, write a

// The roofline: measured once, on first use.
struct Roofline {
  double fp32_tflops, bf16_tflops, gbps;
};
const Roofline& roofline() {
  static const Roofline r = [] {
    Roofline x{};
    // The GEMM ceilings: the best of three calls (each already the best of three n = 1536
    // products); one call alone varies by up to 10% from run to run on this machine.
    for (int rep = 0; rep < 3; ++rep) {
      x.fp32_tflops = std::max(x.fp32_tflops, ff::measure_gemm_tflops(Precision::fp32));
      x.bf16_tflops = std::max(x.bf16_tflops, ff::measure_gemm_tflops(Precision::bf16));
    }
    // 3 x 256 MiB, far beyond the caches; the best of 5 passes after one to fault the pages in.
    Floats a = zeros(kBig), b = uniform(kBig, -1, 1, 1), c = uniform(kBig, -1, 1, 2);
    triad_pass(a.get(), b.get(), c.get(), kBig);
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) best = std::min(best, triad_pass(a.get(), b.get(), c.get(), kBig));
    x.gbps = kTriadBytesPerElement * static_cast<double>(kBig) / best / 1e9;
    return x;
  }();
  return r;
}
double ceiling_tflops(Precision p) { return p == Precision::bf16 ? roofline().bf16_tflops : roofline().fp32_tflops; }

void report_flops(benchmark::State& state, double seconds, double flops, Precision p) {
  const double tflops = flops / seconds / 1e12;
  state.counters["TFLOP/s"] = tflops;
  state.counters["of_ceiling"] = tflops / ceiling_tflops(p);
}
void report_bytes(benchmark::State& state, double seconds, double bytes) {
  const double gbps = bytes / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["of_bandwidth"] = gbps / roofline().gbps;
}

const char* name_of(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

// ---------------------------------------------------------------------------------------------
// Memory bandwidth: the triad itself, 3 x 256 MiB (12 bytes per element).

void BM_MemoryBandwidthTriad(benchmark::State& state) {
  Floats a = zeros(kBig), b = uniform(kBig, -1, 1, 1), c = uniform(kBig, -1, 1, 2);
  const double s = mean_seconds(state, [&] { triad_pass(a.get(), b.get(), c.get(), kBig); });
  report_bytes(state, s, kTriadBytesPerElement * static_cast<double>(kBig));
  state.SetItemsProcessed(state.iterations() * kBig);
}

// ---------------------------------------------------------------------------------------------
// The model's dense GEMMs over N = 4096 tokens, weights W [out, in]; FLOPs 2 N in out per form:
//   forward  y[N, out]  = x[N, in] W^T
//   dx       dX[N, in]  = dY[N, out] W
//   dw       dW[out, in] += dY^T X           (A transposed, accumulating)
// fp32 through OpenBLAS (ff::cpu::linear_forward / gemm, as linear_backward calls it), bf16
// through oneDNN (ff::cpu::Matmul on bf16 operands, fp32 results).

enum class Form { forward, dx, dw };
const char* name_of(Form f) { return f == Form::forward ? "forward" : f == Form::dx ? "dx" : "dw"; }

struct Linear {
  const char* name;
  int64_t in, out;
};
constexpr Linear kLinears[] = {
    {"qkv", kModel, (kHeads + 2 * kKvHeads) * kHeadDim},  // 512 -> 1024
    {"o_proj", kHeads * kHeadDim, kModel},                // 512 -> 512
    {"lm_head", kModel, kVocab},                          // 512 -> 8192
};

void BM_Gemm(benchmark::State& state, Precision p, Linear l, Form form) {
  const int64_t n = kTokens, in = l.in, out = l.out;
  Floats x = uniform(n * in, -1, 1, 1), w = uniform(out * in, -0.05f, 0.05f, 2), dy = uniform(n * out, -1, 1, 3);
  Floats y = zeros(n * out), dx = zeros(n * in), dw = zeros(out * in);
  double s = 0;
  if (p == Precision::fp32) {
    s = mean_seconds(state, [&] {
      if (form == Form::forward) ff::cpu::linear_forward(y.get(), x.get(), w.get(), n, in, out);
      if (form == Form::dx)
        ff::cpu::gemm(false, false, n, in, out, 1.0f, dy.get(), out, w.get(), in, 0.0f, dx.get(), in);
      if (form == Form::dw)
        ff::cpu::gemm(true, false, out, in, n, 1.0f, dy.get(), out, x.get(), in, 1.0f, dw.get(), in);
    });
  } else {
    Halves xh = bf16_copy(x.get(), n * in), wh = bf16_copy(w.get(), out * in), dyh = bf16_copy(dy.get(), n * out);
    ff::cpu::Matmul mm;
    s = mean_seconds(state, [&] {
      if (form == Form::forward) mm.run(false, true, n, out, in, xh.get(), in, wh.get(), in, y.get(), out, false);
      if (form == Form::dx) mm.run(false, false, n, in, out, dyh.get(), out, wh.get(), in, dx.get(), in, false);
      if (form == Form::dw) mm.run(true, false, out, in, n, dyh.get(), out, xh.get(), in, dw.get(), in, true);
    });
  }
  report_flops(state, s, 2.0 * n * in * out, p);
  state.SetItemsProcessed(state.iterations() * n);  // tokens
}

// ---------------------------------------------------------------------------------------------
// Grouped expert GEMMs through ff::Compute over R = 8192 rows in 8 contiguous segments (one per
// expert), weights stacked [8, out, in]:
//   fc1  512 -> 2816 (gate | up of SwiGLU),   fc2  1408 -> 512.
// FLOPs: forward 2 R in out;  backward 4 R in out (dX = dY W and dW += dY^T X per expert).
// Rows per expert (mean 1024):
//   dropless  skewed as a router leaves them: 2, 1.5, 1.25, 1, 0.875, 0.75, 0.625 and 0 x the mean
//   capacity  every expert padded to its capacity of 1024 rows.

struct ExpertLinear {
  const char* name;
  int64_t in, out;
};
constexpr ExpertLinear kExpertLinears[] = {{"fc1", kModel, 2 * kExpertHidden}, {"fc2", kExpertHidden, kModel}};

std::vector<int64_t> expert_rows(bool dropless) {
  if (!dropless) return std::vector<int64_t>(kExperts, kExpertRows / kExperts);
  return {2048, 1536, 1280, 1024, 896, 768, 640, 0};  // sums to 8192
}

void BM_GroupedGemm(benchmark::State& state, Precision p, ExpertLinear l, bool dropless, bool backward) {
  const std::vector<int64_t> counts = expert_rows(dropless);
  const int64_t R = kExpertRows, in = l.in, out = l.out, stride = in * out;
  Floats w = uniform(kExperts * stride, -0.05f, 0.05f, 1), grad = zeros(kExperts * stride);
  Floats x = uniform(R * in, -1, 1, 2), dy = uniform(R * out, -1, 1, 3), y = zeros(R * out), dx = zeros(R * in);
  Halves wh = p == Precision::bf16 ? bf16_copy(w.get(), kExperts * stride) : nullptr;
  ff::Compute compute(p);
  ff::Arena arena;
  const ff::Tensor xo = compute.operand(x.get(), R, in, arena), dyo = compute.operand(dy.get(), R, out, arena);
  const ff::Weight weight{w.get(), wh.get(), grad.get()};
  const double s = mean_seconds(state, [&] {
    if (backward)
      compute.grouped_backward(dx.get(), weight, stride, dyo, xo, counts, in, out);
    else
      compute.grouped_forward(y.get(), xo, weight, stride, counts, in, out);
  });
  report_flops(state, s, (backward ? 4.0 : 2.0) * R * in * out, p);
  state.SetItemsProcessed(state.iterations() * R);  // expert rows
}

// ---------------------------------------------------------------------------------------------
// Causal GQA attention on a fused qkv buffer [B S, (Hq + 2 Hkv) dh] as layers/attention.cpp lays
// it out (q heads, then k, then v in each row). fp32: the block products through OpenBLAS; bf16
// (AttentionShape::bf16, what the layer sets under --precision bf16): the block products on
// bf16-rounded operands through the serial AVX512-BF16 GEMM; softmax and outputs fp32 in both.
// FLOPs per B S^2 Hq dh, counted as flash attention does, causal half only:
//   forward   2 GEMM-equivalents (q k^T, p v):                 4 B Hq S^2 dh / 2
//   backward  5 (q k^T recomputed, dV, dP, dQ, dK) = 2.5 x forward.
// Compared with the GEMM ceiling of the same precision.

void BM_Attention(benchmark::State& state, Precision p, int64_t B, int64_t S, bool backward) {
  const int64_t n = B * S, ld = (kHeads + 2 * kKvHeads) * kHeadDim, width = kHeads * kHeadDim;
  Floats qkv = uniform(n * ld, -1, 1, 1), dout = uniform(n * width, -1, 1, 2);
  Floats o = zeros(n * width), lse = zeros(B * kHeads * S), dqkv = zeros(n * ld);
  ff::cpu::AttentionShape shape{B, S, kHeads, kKvHeads, kHeadDim, ld, ld, 1.0f / std::sqrt(float(kHeadDim))};
  shape.bf16 = p == Precision::bf16;
  const float *q = qkv.get(), *k = q + kHeads * kHeadDim, *v = k + kKvHeads * kHeadDim;
  float *dq = dqkv.get(), *dk = dq + kHeads * kHeadDim, *dv = dk + kKvHeads * kHeadDim;
  Floats work = zeros(ff::cpu::attention_workspace_floats(shape, omp_get_max_threads()));  // as the layer passes it
  ff::cpu::attention_forward(o.get(), lse.get(), q, k, v, shape, work.get());  // what backward reads
  const double s = mean_seconds(state, [&] {
    if (backward)
      ff::cpu::attention_backward(dq, dk, dv, dout.get(), q, k, v, o.get(), lse.get(), shape, work.get());
    else
      ff::cpu::attention_forward(o.get(), lse.get(), q, k, v, shape, work.get());
  });
  const double forward_flops = 4.0 * B * kHeads * S * S * kHeadDim / 2;
  report_flops(state, s, (backward ? 2.5 : 1.0) * forward_flops, p);
  state.SetItemsProcessed(state.iterations() * n);  // tokens
}

// ---------------------------------------------------------------------------------------------
// Memory-bound kernels, against the triad's bandwidth.

// AdamW over 64M fp32 parameters: reads p, m, v, g and writes p, m, v: 28 bytes per parameter.
void BM_AdamW(benchmark::State& state) {
  const int64_t n = kBig;
  Floats p = uniform(n, -0.05f, 0.05f, 1), m = uniform(n, -1e-3f, 1e-3f, 2), v = uniform(n, 0.0f, 1e-6f, 3);
  Floats g = uniform(n, -1e-3f, 1e-3f, 4);
  const ff::cpu::AdamWStep step{3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 10, 1.0f};
  const double s = mean_seconds(state, [&] { ff::cpu::adamw_update(p.get(), m.get(), v.get(), g.get(), n, step); });
  report_bytes(state, s, 28.0 * n);
  state.SetItemsProcessed(state.iterations() * n);  // parameters
}

// RMSNorm forward + backward on [N, D] = [4096, 512]. Forward reads x, writes y (8 bytes per
// element); backward reads dy and x and accumulates into dx (16 bytes per element): 24 in all
// (w, dw and rstd are O(N + D)). At 8 MiB per array the working set partly fits in the L3 cache,
// so this one can beat the DRAM triad.
void BM_RmsNorm(benchmark::State& state) {
  const int64_t n = kTokens, d = kModel;
  Floats x = uniform(n * d, -1, 1, 1), w = uniform(d, 0.5f, 1.5f, 2), dy = uniform(n * d, -1, 1, 3);
  Floats y = zeros(n * d), rstd = zeros(n), dx = zeros(n * d), dw = zeros(d);
  const double s = mean_seconds(state, [&] {
    ff::cpu::rmsnorm_forward(y.get(), rstd.get(), x.get(), w.get(), 1e-5f, n, d);
    ff::cpu::rmsnorm_backward(dx.get(), dw.get(), dy.get(), x.get(), w.get(), rstd.get(), n, d);
  });
  report_bytes(state, s, 24.0 * n * d);
  state.SetItemsProcessed(state.iterations() * n);  // rows
}

// SwiGLU forward on the experts' fc1 output [R, 2F] = [8192, 2816] -> [8192, 1408]. Reads gate
// and up (8 bytes per output element) and writes the output: 12 bytes per output element for
// swiglu_forward (the dense MLP's) and for the experts' fused pass swiglu_scaled_forward (x the
// row's gating prob, O(R) more) writing fp32, 10 for the fused pass writing the bf16 operand, and
// 6 for the bf16 path as the model runs it (bf16 pre-activation in, bf16 operand out).
enum class Swiglu { plain, scaled_fp32, scaled_bf16, bf16_in_out };

void BM_SwiGLU(benchmark::State& state, Swiglu variant) {
  const int64_t n = kExpertRows, f = kExpertHidden;
  Floats in = uniform(n * 2 * f, -4, 4, 1), prob = uniform(n, 0, 1, 2), out = zeros(n * f);
  Halves out_bf16(new ff::bf16_t[static_cast<size_t>(n * f)]), in_bf16(new ff::bf16_t[static_cast<size_t>(n * 2 * f)]);
  ff::cpu::to_bf16(in_bf16.get(), in.get(), n * 2 * f);
  const double s = mean_seconds(state, [&] {
    if (variant == Swiglu::plain) ff::cpu::swiglu_forward(out.get(), in.get(), n, f);
    if (variant == Swiglu::scaled_fp32) ff::cpu::swiglu_scaled_forward(out.get(), nullptr, in.get(), prob.get(), n, f);
    if (variant == Swiglu::scaled_bf16)
      ff::cpu::swiglu_scaled_forward(nullptr, out_bf16.get(), in.get(), prob.get(), n, f);
    if (variant == Swiglu::bf16_in_out)
      ff::cpu::swiglu_scaled_forward(nullptr, out_bf16.get(), in_bf16.get(), prob.get(), n, f);
  });
  const double bytes = variant == Swiglu::bf16_in_out ? 6.0 : variant == Swiglu::scaled_bf16 ? 10.0 : 12.0;
  report_bytes(state, s, bytes * n * f);
  state.SetItemsProcessed(state.iterations() * n);  // rows
}

// Cross-entropy forward + backward over logits [N, V] = [4096, 8192] (128 MiB), the gradient
// written in place over the logits as the model does: forward reads the logits (4 bytes per
// element), backward reads and overwrites them (8): 12 bytes per element. After the first
// iteration the kernel runs on the previous gradients; its cost does not depend on the values.
void BM_CrossEntropy(benchmark::State& state) {
  const int64_t n = kTokens, V = kVocab;
  Floats logits = uniform(n * V, -4, 4, 1), loss = zeros(n), lse = zeros(n), dloss = uniform(n, 1.0f / n, 1.0f / n, 0);
  std::vector<int32_t> targets(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) targets[static_cast<size_t>(i)] = static_cast<int32_t>(mix(uint64_t(i)) % V);
  const double s = mean_seconds(state, [&] {
    ff::cpu::cross_entropy_forward(loss.get(), lse.get(), logits.get(), targets.data(), n, V);
    ff::cpu::cross_entropy_backward(logits.get(), logits.get(), lse.get(), targets.data(), dloss.get(), n, V);
  });
  report_bytes(state, s, 12.0 * n * V);
  state.SetItemsProcessed(state.iterations() * n);  // rows
}

// fp32 -> bf16 of 64M values (the weights' bf16 copy after each optimizer step): reads 4 bytes,
// writes 2 per value.
void BM_ToBf16(benchmark::State& state) {
  const int64_t n = kBig;
  Floats x = uniform(n, -1, 1, 1);
  Halves h(new ff::bf16_t[static_cast<size_t>(n)]);
  const double s = mean_seconds(state, [&] { ff::cpu::to_bf16(h.get(), x.get(), n); });
  report_bytes(state, s, 6.0 * n);
  state.SetItemsProcessed(state.iterations() * n);  // values
}

// ---------------------------------------------------------------------------------------------

template <class... Args>
void add(const std::string& name, Args&&... args) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Args>(args)...)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(kIterations);
}

void register_all() {
  add("BM_MemoryBandwidthTriad", BM_MemoryBandwidthTriad);
  for (Precision p : {Precision::fp32, Precision::bf16})
    for (const Linear& l : kLinears)
      for (Form f : {Form::forward, Form::dx, Form::dw})
        add(std::string("BM_Gemm/") + name_of(p) + "/" + l.name + "/" + name_of(f), BM_Gemm, p, l, f);
  for (Precision p : {Precision::fp32, Precision::bf16})
    for (const ExpertLinear& l : kExpertLinears)
      for (bool dropless : {true, false})
        for (bool backward : {false, true})
          add(std::string("BM_GroupedGemm/") + name_of(p) + "/" + l.name + (dropless ? "/dropless" : "/capacity") +
                  (backward ? "/backward" : "/forward"),
              BM_GroupedGemm, p, l, dropless, backward);
  for (Precision p : {Precision::fp32, Precision::bf16})
    for (auto [B, S] : {std::pair<int64_t, int64_t>{8, 512}, {2, 2048}})
      for (bool backward : {false, true})
        add(std::string("BM_Attention/") + name_of(p) + (backward ? "/backward" : "/forward") + "/B:" +
                std::to_string(B) + "/S:" + std::to_string(S),
            BM_Attention, p, B, S, backward);
  add("BM_AdamW/params:64M", BM_AdamW);
  add("BM_RmsNorm/fwd+bwd/4096x512", BM_RmsNorm);
  add("BM_SwiGLU/forward/8192x2816", BM_SwiGLU, Swiglu::plain);
  add("BM_SwiGLU/scaled_forward_fp32/8192x2816", BM_SwiGLU, Swiglu::scaled_fp32);
  add("BM_SwiGLU/scaled_forward_bf16/8192x2816", BM_SwiGLU, Swiglu::scaled_bf16);
  add("BM_SwiGLU/scaled_forward_bf16_in_out/8192x2816", BM_SwiGLU, Swiglu::bf16_in_out);
  add("BM_CrossEntropy/fwd+bwd/4096x8192", BM_CrossEntropy);
  add("BM_ToBf16/values:64M", BM_ToBf16);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const Roofline& r = roofline();
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("ceiling_fp32_tflops", std::to_string(r.fp32_tflops));
  benchmark::AddCustomContext("ceiling_bf16_tflops", std::to_string(r.bf16_tflops));
  benchmark::AddCustomContext("triad_gbps", std::to_string(r.gbps));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
