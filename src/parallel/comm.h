// Communicator: a thin owner of one MPI communicator with the collectives fivefold uses.
// Every collective names the group it runs on; there is no default to the world.
// Sums of floats are computed by MPI's reduction, which Open MPI performs in a fixed order for a
// fixed group size, so results are reproducible run to run.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace ff {

// Initialises MPI for the lifetime of the object (MPI_THREAD_FUNNELED) and records the world rank
// for error messages. One per process, made by main() or a test main.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
};

// Where a rank's collectives are recorded in the debug mode (parallel.trace_collectives): one line
// per collective, "seq group op elements", so the logs of all ranks can be compared: every rank of
// a group must issue the same collectives in the same order. Owned by the ParallelGrid.
struct CollectiveTrace {
  std::FILE* out = nullptr;
  int64_t seq = 0;
};

class Communicator {
 public:
  Communicator() = default;  // invalid until assigned
  ~Communicator();
  Communicator(Communicator&& o) noexcept;
  Communicator& operator=(Communicator&& o) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  static Communicator world();
  // Ranks with the same color form a group, ordered by key.
  Communicator split(int color, int key) const;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }

  // Names the group in traces; attaches a trace (null = off).
  void set_name(std::string name, CollectiveTrace* trace) {
    name_ = std::move(name);
    trace_ = trace;
  }
  // Seconds this rank has spent inside this group's collectives (waiting included).
  double seconds() const { return seconds_; }

  void all_reduce_sum(float* data, int64_t n) const;
  void all_reduce_sum(double* data, int64_t n) const;
  void all_reduce_sum(int64_t* data, int64_t n) const;
  void all_reduce_max(double* data, int64_t n) const;
  void broadcast(void* data, int64_t bytes, int root) const;
  void barrier() const;

  // out[size * n] = concatenation over ranks (in rank order) of each rank's in[n]. in may be this
  // rank's own block of out (in place).
  void all_gather(int64_t* out, const int64_t* in, int64_t n) const;
  void all_gather(float* out, const float* in, int64_t n) const;
  // out[n] = this rank's block of the rank-ordered blocks of in[size * n], summed over ranks.
  void reduce_scatter(float* out, const float* in, int64_t n) const;
  // Variable all-gather of rows of `width` floats: rank q contributes rows[q] rows (in holds
  // rows[rank]); out receives all of them in rank order. Its adjoint is reduce_scatter_v.
  void all_gather_v(float* out, const float* in, const std::vector<int64_t>& rows, int64_t width) const;
  // out[rows[rank], width] = this rank's row block of in[sum(rows), width], summed over ranks.
  void reduce_scatter_v(float* out, const float* in, const std::vector<int64_t>& rows, int64_t width) const;
  // Variable all-to-all of rows of `width` floats: send_rows[q] rows go to rank q (contiguous, in
  // rank order); recv_rows[q] rows arrive from rank q. Its adjoint is the same call with the
  // counts swapped.
  void all_to_all_v(float* recv, const std::vector<int64_t>& recv_rows, const float* send,
                    const std::vector<int64_t>& send_rows, int64_t width) const;
  // Point-to-point (pipeline stages): send is non-blocking and completes in wait_sends() (the data
  // must stay alive until then); recv blocks. tag names the message.
  void send(const float* data, int64_t n, int dest, int tag) const;
  // The same, with the request kept by the caller, who completes it with wait().
  void send(const float* data, int64_t n, int dest, int tag, std::vector<MPI_Request>& requests) const;
  static void wait(std::vector<MPI_Request>& requests);
  void recv(float* data, int64_t n, int src, int tag) const;
  void wait_sends() const;
  // A sub-communicator of MPI_COMM_SELF: the one-rank world, for single-process references.
  static Communicator self();

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0, size_ = 0;
  std::string name_ = "world";
  CollectiveTrace* trace_ = nullptr;
  mutable double seconds_ = 0;
  mutable std::vector<MPI_Request> pending_sends_;
  friend class CollectiveScope;
};

// Ends the whole job after an unrecoverable error on this rank: prints the message and calls
// MPI_Abort so the other ranks do not wait forever in a collective.
[[noreturn]] void abort_job(const std::string& message);
// The same for an error that every rank may find alike (a bad flag, config or file): rank 0 prints
// it and ends the job; the other ranks wait a moment for that and print only if the job is still
// running (rank 0 did not find it), so the message appears once, never not at all.
[[noreturn]] void abort_job_once(const std::string& message);

}  // namespace ff
