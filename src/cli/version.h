// `fivefold --version`: the version and what this build runs on (its BLAS and the kernel set the
// environment chose, oneDNN, MPI, the compiler target, CUDA).
#pragma once
#include <string>

namespace ff {

std::string version_text();

}  // namespace ff
