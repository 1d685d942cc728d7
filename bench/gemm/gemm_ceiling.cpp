// The machine's GEMM ceilings, fp32 and bf16 (fp32 accumulate), through oneDNN's matmul on the
// shapes of the moe-small model: the denominators for MFU and the bf16 work of issue 7.
//   OMP_NUM_THREADS=2 ./build/fivefold_gemm_ceiling
#include <chrono>
#include <cstdio>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

int main() {
  using namespace dnnl;
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  // (M, N, K): expert fc1 of 4096 rows, a square product, expert fc2.
  for (auto [M, N, K] : {std::tuple<long, long, long>{4096, 2816, 512}, {2048, 2048, 2048}, {1024, 512, 1408}}) {
    for (auto dt : {memory::data_type::f32, memory::data_type::bf16}) {
      memory::desc a({M, K}, dt, memory::format_tag::ab), b({K, N}, dt, memory::format_tag::ab),
          c({M, N}, memory::data_type::f32, memory::format_tag::ab);
      matmul::primitive_desc pd(matmul::desc(a, b, c), eng);
      matmul mm(pd);
      memory A(a, eng), B(b, eng), C(c, eng);
      auto run = [&] { mm.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}}); };
      run();
      s.wait();
      const int reps = 5;
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) run();
      s.wait();
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
      std::printf("%5ld x %5ld x %5ld %s: %.3f TFLOP/s  (%s)\n", M, N, K,
                  dt == memory::data_type::f32 ? "fp32" : "bf16", 2.0 * M * N * K / sec / 1e12, pd.impl_info_str());
    }
  }
  return 0;
}
