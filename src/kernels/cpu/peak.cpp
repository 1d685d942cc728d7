#include "kernels/cpu/peak.h"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "core/check.h"

namespace ff::cpu {

namespace {

// Accumulators in flight per thread: more than latency x issue rate of any of the instructions
// (FMA: 4 cycles x 2 per cycle; vdpbf16ps: 6 x 1), and few enough to stay in 16 ymm registers.
constexpr int kChains = 12;

// The multiplicands come from memory the compiler cannot see through, so that acc * 1 + 1 stays
// a multiply-add and is not folded.
float runtime_one() {
  volatile float one = 1.0f;
  return one;
}
uint16_t runtime_bf16_one() {
  volatile uint16_t one = 0x3F80;  // 1.0 in bf16
  return one;
}

__attribute__((target("avx2,fma"))) double fma_ymm(int64_t n) {
  const __m256 a = _mm256_set1_ps(runtime_one()), b = _mm256_set1_ps(runtime_one());
  __m256 acc[kChains];
  for (auto& x : acc) x = _mm256_setzero_ps();
  for (int64_t it = 0; it < n; ++it) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  }
  __m256 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm256_add_ps(sum, acc[c]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  double total = 0;
  for (float v : lanes) total += v;
  return total / (8.0 * kChains);
}

// The mean over the chains' lanes.
__attribute__((target("avx512f"))) double lane_mean(const __m512 (&acc)[kChains]) {
  alignas(64) float lanes[16];
  double total = 0;
  for (const __m512& a : acc) {
    _mm512_store_ps(lanes, a);
    for (float v : lanes) total += v;
  }
  return total / (16.0 * kChains);
}

__attribute__((target("avx512f"))) double fma_zmm(int64_t n) {
  const __m512 a = _mm512_set1_ps(runtime_one()), b = _mm512_set1_ps(runtime_one());
  __m512 acc[kChains];
  for (auto& x : acc) x = _mm512_setzero_ps();
  for (int64_t it = 0; it < n; ++it) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  }
  return lane_mean(acc);
}

__attribute__((target("avx512f,avx512bf16"))) double dpbf16_zmm(int64_t n) {
  const __m512bh a = (__m512bh)_mm512_set1_epi16(static_cast<short>(runtime_bf16_one()));
  const __m512bh b = (__m512bh)_mm512_set1_epi16(static_cast<short>(runtime_bf16_one()));
  __m512 acc[kChains];
  for (auto& x : acc) x = _mm512_setzero_ps();
  for (int64_t it = 0; it < n; ++it) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  return lane_mean(acc);
}

// AMX's tile configuration (palette 1): eight tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Four independent accumulator tiles (tmm0-3), fed by two A tiles (tmm4-5, 16 x 32 bf16) and two
// B tiles (tmm6-7, 16 pairs x 16 columns); every element of every operand is 1.
__attribute__((target("amx-tile,amx-bf16"))) double amx_bf16(int64_t n) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  alignas(64) uint16_t ones[16 * 32];
  std::fill(std::begin(ones), std::end(ones), runtime_bf16_one());
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t it = 0; it < n; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float out[16 * 16];
  double total = 0;
  _tile_stored(0, out, 64);
  for (float v : out) total += v;
  _tile_stored(3, out, 64);
  for (float v : out) total += v;
  _tile_release();
  return total / (2.0 * 16 * 16);
}

int64_t instructions_per_iteration(PeakKernel k) { return k == PeakKernel::amx_bf16 ? 4 : kChains; }

bool cpu_has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d >> 22 & 1) && (d >> 24 & 1);  // AMX-BF16, AMX-TILE
}

// Linux hands a process the AMX tile state only when asked (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); asking again is harmless.
bool os_grants_amx() {
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

PeakKernel fp32_kernel() {
  if (__builtin_cpu_supports("avx512f")) return PeakKernel::fma_zmm;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return PeakKernel::fma_ymm;
  return PeakKernel::none;
}

}  // namespace

PeakKernel peak_kernel(Precision precision) {
  if (precision == Precision::bf16) {
    if (cpu_has_amx_bf16() && os_grants_amx()) return PeakKernel::amx_bf16;
    if (__builtin_cpu_supports("avx512bf16")) return PeakKernel::dpbf16_zmm;
  }
  return fp32_kernel();
}

const char* peak_kernel_name(PeakKernel k) {
  switch (k) {
    case PeakKernel::fma_ymm: return "vfmadd231ps ymm";
    case PeakKernel::fma_zmm: return "vfmadd231ps zmm";
    case PeakKernel::dpbf16_zmm: return "vdpbf16ps zmm";
    case PeakKernel::amx_bf16: return "AMX tdpbf16ps";
    case PeakKernel::none: break;
  }
  return "none";
}

double flops_per_instruction(PeakKernel k) {
  switch (k) {
    case PeakKernel::fma_ymm: return 16;
    case PeakKernel::fma_zmm: return 32;
    case PeakKernel::dpbf16_zmm: return 64;
    case PeakKernel::amx_bf16: return 16.0 * 16 * 32 * 2;
    case PeakKernel::none: break;
  }
  return 0;
}

double run_peak_kernel(PeakKernel k, int64_t iterations, int64_t* instructions) {
  if (instructions) *instructions = iterations * instructions_per_iteration(k);
  switch (k) {
    case PeakKernel::fma_ymm: return fma_ymm(iterations);
    case PeakKernel::fma_zmm: return fma_zmm(iterations);
    case PeakKernel::dpbf16_zmm: return dpbf16_zmm(iterations);
    case PeakKernel::amx_bf16: return amx_bf16(iterations);
    case PeakKernel::none: break;
  }
  FF_FAIL("this CPU has neither AVX2 + FMA nor AVX-512: no peak kernel to run");
}

std::string PeakRate::describe() const {
  return strprintf("%.3f TFLOP/s (%s chains, %d thread%s)", tflops, peak_kernel_name(kernel), threads,
                   threads == 1 ? "" : "s");
}

PeakRate measure_peak(Precision precision) {
  PeakRate r;
  r.kernel = peak_kernel(precision);
  r.threads = omp_get_max_threads();
  if (r.kernel == PeakKernel::none) return r;
  // About 25 ms per timed run at 2 instructions (AMX: 1/16) per cycle and 3 GHz.
  const int64_t n = r.kernel == PeakKernel::amx_bf16 ? 300000 : 6000000;
  double best = 0, sink = 0;
  for (int rep = 0; rep < 4; ++rep) {  // the first warms the clocks and the tile state up
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
    sink += run_peak_kernel(r.kernel, n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double flops = static_cast<double>(r.threads) * static_cast<double>(n * instructions_per_iteration(r.kernel)) *
                         flops_per_instruction(r.kernel);
    if (rep > 0) best = std::max(best, flops / s / 1e12);
  }
  FF_CHECK(sink > 0, "the peak kernel %s computed nothing", peak_kernel_name(r.kernel));
  r.tflops = best;
  return r;
}

}  // namespace ff::cpu
