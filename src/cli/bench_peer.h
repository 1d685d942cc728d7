// `fivefold bench --peer`: the PyTorch peer (bench/torch_peer.py, the same model written
// independently in bench/torch_model.py) timed on the same config right after fivefold, and the
// comparison line of the two.
#pragma once
#include <cstdint>
#include <string>

#include "train/config.h"

namespace ff {

// What one `fivefold bench` measurement gave (rank 0's view of the job).
struct BenchResult {
  double tokens_per_s = 0;
  double peak_rss_bytes = 0;  // the maximum over the ranks
  int threads = 1;            // OpenMP threads per rank
};

struct PeerOptions {
  bool on = false;
  std::string script;  // set in main() to default_peer_script()
  std::string python = "/usr/bin/python3";  // Debian's, which has python3-torch
};

// The source tree's bench/torch_peer.py: FF_SOURCE_DIR (given by CMake) if the script is there,
// else ../bench beside the binary's folder (build/fivefold -> bench/).
std::string default_peer_script();
// Whether `program` can be started: an executable file at that path, or, for a bare name, in PATH.
bool executable_found(const std::string& program);
// Runs the peer on config c with fivefold's steps, warm-up and threads, prints its lines prefixed
// `peer: ` and then the `compare:` line against fivefold's result ff. Fails with a clear error
// when the peer cannot run or reports no result.
void run_peer(RunConfig c, const PeerOptions& peer, int64_t steps, int64_t warmup, const BenchResult& ff);

}  // namespace ff
