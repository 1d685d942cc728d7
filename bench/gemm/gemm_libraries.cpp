// fp32 GEMM: OpenBLAS's cblas_sgemm against oneDNN's dnnl_sgemm on the shapes of moe-small's
// training step (micro-batch 8 x seq 512 = 4,096 tokens; d_model 512, 8 experts of 1,408 top-2,
// vocabulary 8,192), each in the three forms a linear layer uses: forward y = x w^T (NT), input
// gradient dx = dy w (NN), weight gradient dw += dy^T x (TN). Interleaved runs of each pair,
// the median of 9; GFLOP/s and the ratio oneDNN / OpenBLAS (issue 18: one GEMM library for both
// precisions unless some shape is faster in OpenBLAS).
//   OMP_NUM_THREADS=2 ./build/fivefold_gemm_libraries
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

namespace {

struct Shape {
  const char* what;
  long rows, in, out;  // a linear layer x[rows, in] -> y[rows, out]
};

double seconds(auto&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  const Shape shapes[] = {{"qkv projection", 4096, 512, 1024},      {"attention output", 4096, 512, 512},
                          {"expert fc1 (gate+up)", 1024, 512, 2816}, {"expert fc2", 1024, 1408, 512},
                          {"LM head", 4096, 512, 8192}};
  std::printf("%-22s %-4s %10s %10s %7s\n", "shape", "form", "OpenBLAS", "oneDNN", "ratio");
  for (const Shape& s : shapes) {
    const long R = s.rows, I = s.in, O = s.out;
    std::vector<float> x(R * I, 0.5f), w(O * I, 0.25f), y(R * O, 0.0f), dy(R * O, 0.125f), dx(R * I), dw(O * I);
    struct Form {
      const char* name;
      char ta, tb;
      long M, N, K, lda, ldb, ldc;
      const float *A, *B;
      float* C;
      float beta;
    };
    const Form forms[] = {{"NT", 'N', 'T', R, O, I, I, I, O, x.data(), w.data(), y.data(), 0.0f},
                          {"NN", 'N', 'N', R, I, O, O, I, I, dy.data(), w.data(), dx.data(), 0.0f},
                          {"TN", 'T', 'N', O, I, R, O, I, I, dy.data(), x.data(), dw.data(), 1.0f}};
    for (const Form& f : forms) {
      auto blas = [&] {
        cblas_sgemm(CblasRowMajor, f.ta == 'T' ? CblasTrans : CblasNoTrans, f.tb == 'T' ? CblasTrans : CblasNoTrans,
                    f.M, f.N, f.K, 1.0f, f.A, f.lda, f.B, f.ldb, f.beta, f.C, f.ldc);
      };
      auto dnnl = [&] { dnnl_sgemm(f.ta, f.tb, f.M, f.N, f.K, 1.0f, f.A, f.lda, f.B, f.ldb, f.beta, f.C, f.ldc); };
      blas();
      dnnl();
      std::vector<double> tb, td;
      for (int r = 0; r < 9; ++r) {
        tb.push_back(seconds(blas));
        td.push_back(seconds(dnnl));
      }
      const double flops = 2.0 * f.M * f.N * f.K, gb = flops / median(tb) / 1e9, gd = flops / median(td) / 1e9;
      std::printf("%-22s %-4s %10.1f %10.1f %6.2fx\n", s.what, f.name, gb, gd, gd / gb);
    }
  }
  return 0;
}
