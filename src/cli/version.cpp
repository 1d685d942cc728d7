#include "cli/version.h"

#include <dlfcn.h>
#include <mpi.h>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/check.h"

namespace ff {

namespace {
// OpenBLAS's own description of itself, looked up in the loaded library (the build links the BLAS
// interface, libblas, which loads libopenblas): "?" where it is not OpenBLAS.
std::string openblas(const char* function) {
  using Describe = char* (*)();
  auto f = reinterpret_cast<Describe>(dlsym(RTLD_DEFAULT, function));
  return f ? f() : "?";
}

// The instruction set oneDNN dispatches to here (DNNL_MAX_CPU_ISA can lower it).
const char* cpu_isa_name() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx: return "AVX-512 + AMX";
    case dnnl::cpu_isa::avx512_core_bf16: return "AVX-512 + BF16";
    case dnnl::cpu_isa::avx512_core_vnni: return "AVX-512 + VNNI";
    case dnnl::cpu_isa::avx512_core: return "AVX-512";
    case dnnl::cpu_isa::avx2_vnni: return "AVX2 + VNNI";
    case dnnl::cpu_isa::avx2: return "AVX2";
    default: return "other";
  }
}
}  // namespace

std::string version_text() {
  const dnnl_version_t* d = dnnl_version();
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(mpi, &len);
  std::string mpi_line(mpi, static_cast<size_t>(len));
  if (const size_t nl = mpi_line.find_first_of(",\n"); nl != std::string::npos) mpi_line.resize(nl);
  return strprintf("fivefold %s (%s build, -march=%s)\n"
                   "  fp32 GEMMs: %s (kernels: %s)\n"
                   "  bf16 GEMMs: oneDNN %d.%d.%d (CPU ISA in use: %s)\n"
                   "  MPI: %s\n"
                   "  CUDA: not in this build (CPU backend)",
                   FF_VERSION, FF_BUILD_TYPE, FF_MARCH_FLAG, openblas("openblas_get_config").c_str(),
                   openblas("openblas_get_corename").c_str(), d->major, d->minor, d->patch, cpu_isa_name(),
                   mpi_line.c_str());
}

}  // namespace ff
