#include "parallel/comm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/check.h"

namespace ff {

namespace {
void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  FF_FAIL("MPI %s failed: %s", what, msg);
}
}  // namespace

// Times one collective and, in the debug mode, records it.
class CollectiveScope {
 public:
  CollectiveScope(const Communicator& c, const char* op, int64_t elements) : c_(c), t0_(Clock::now()) {
    if (c.trace_ && c.trace_->out) {
      std::fprintf(c.trace_->out, "%lld %s %s %lld\n", (long long)c.trace_->seq++, c.name_.c_str(), op,
                   (long long)elements);
      std::fflush(c.trace_->out);
    }
  }
  ~CollectiveScope() { c_.seconds_ += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  const Communicator& c_;
  Clock::time_point t0_;
};

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "init");
  // Errors come back as return codes so they become FF errors with a rank attached.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  error_rank() = rank;
}

MpiSession::~MpiSession() { MPI_Finalize(); }

Communicator::~Communicator() {
  if (owned_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Communicator::Communicator(Communicator&& o) noexcept
    : comm_(o.comm_), owned_(o.owned_), rank_(o.rank_), size_(o.size_), name_(std::move(o.name_)),
      trace_(o.trace_), seconds_(o.seconds_) {
  o.comm_ = MPI_COMM_NULL;
  o.owned_ = false;
}

Communicator& Communicator::operator=(Communicator&& o) noexcept {
  if (this != &o) {
    if (owned_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    comm_ = o.comm_;
    owned_ = o.owned_;
    rank_ = o.rank_;
    size_ = o.size_;
    name_ = std::move(o.name_);
    trace_ = o.trace_;
    seconds_ = o.seconds_;
    o.comm_ = MPI_COMM_NULL;
    o.owned_ = false;
  }
  return *this;
}

Communicator Communicator::world() {
  Communicator c;
  c.comm_ = MPI_COMM_WORLD;
  MPI_Comm_rank(MPI_COMM_WORLD, &c.rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &c.size_);
  return c;
}

Communicator Communicator::split(int color, int key) const {
  Communicator c;
  check_mpi(MPI_Comm_split(comm_, color, key, &c.comm_), "comm_split");
  c.owned_ = true;
  MPI_Comm_rank(c.comm_, &c.rank_);
  MPI_Comm_size(c.comm_, &c.size_);
  return c;
}

void Communicator::all_reduce_sum(float* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  CollectiveScope scope(*this, "all_reduce", n);
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_), "allreduce");
}
void Communicator::all_reduce_sum(double* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  CollectiveScope scope(*this, "all_reduce", n);
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_), "allreduce");
}
void Communicator::all_reduce_sum(int64_t* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  CollectiveScope scope(*this, "all_reduce", n);
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_INT64_T, MPI_SUM, comm_), "allreduce");
}
void Communicator::all_reduce_max(double* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  CollectiveScope scope(*this, "all_reduce", n);
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_MAX, comm_), "allreduce");
}
void Communicator::broadcast(void* data, int64_t bytes, int root) const {
  if (size_ == 1 || bytes == 0) return;
  CollectiveScope scope(*this, "broadcast", bytes);
  check_mpi(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_), "bcast");
}
void Communicator::barrier() const {
  if (size_ == 1) return;
  CollectiveScope scope(*this, "barrier", 0);
  check_mpi(MPI_Barrier(comm_), "barrier");
}

void Communicator::all_gather(int64_t* out, const int64_t* in, int64_t n) const {
  if (size_ == 1) {
    std::copy(in, in + n, out);
    return;
  }
  CollectiveScope scope(*this, "all_gather", n);
  check_mpi(MPI_Allgather(in, static_cast<int>(n), MPI_INT64_T, out, static_cast<int>(n), MPI_INT64_T, comm_), "allgather");
}

void Communicator::all_gather(float* out, const float* in, int64_t n) const {
  if (size_ == 1) {
    if (in != out) std::copy(in, in + n, out);
    return;
  }
  if (in == out + static_cast<int64_t>(rank_) * n) {  // in place: this rank's block is already there
    CollectiveScope scope(*this, "all_gather", n);
    check_mpi(MPI_Allgather(MPI_IN_PLACE, 0, MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, comm_), "allgather");
    return;
  }
  CollectiveScope scope(*this, "all_gather", n);
  check_mpi(MPI_Allgather(in, static_cast<int>(n), MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, comm_), "allgather");
}

void Communicator::reduce_scatter(float* out, const float* in, int64_t n) const {
  if (size_ == 1) {
    std::copy(in, in + n, out);
    return;
  }
  CollectiveScope scope(*this, "reduce_scatter", n);
  check_mpi(MPI_Reduce_scatter_block(in, out, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_), "reduce_scatter");
}

void Communicator::all_to_all_v(float* recv, const std::vector<int64_t>& recv_rows, const float* send,
                                const std::vector<int64_t>& send_rows, int64_t width) const {
  FF_CHECK(static_cast<int>(recv_rows.size()) == size_ && static_cast<int>(send_rows.size()) == size_,
           "all_to_all_v: %zu/%zu counts for a group of %d", send_rows.size(), recv_rows.size(), size_);
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t so = 0, ro = 0;
  for (int q = 0; q < size_; ++q) {
    FF_CHECK(send_rows[q] * width < (int64_t(1) << 31) && ro + recv_rows[q] * width < (int64_t(1) << 31),
             "all_to_all_v: message too large for MPI int counts");
    sc[q] = static_cast<int>(send_rows[q] * width);
    sd[q] = static_cast<int>(so);
    rc[q] = static_cast<int>(recv_rows[q] * width);
    rd[q] = static_cast<int>(ro);
    so += sc[q];
    ro += rc[q];
  }
  if (size_ == 1) {
    std::copy(send, send + so, recv);
    return;
  }
  CollectiveScope scope(*this, "all_to_all_v", so);
  check_mpi(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT, comm_),
            "alltoallv");
}

namespace {
// MPI counts and displacements (in floats) for per-rank row counts.
void counts_of(const std::vector<int64_t>& rows, int64_t width, std::vector<int>& counts, std::vector<int>& displs) {
  counts.resize(rows.size());
  displs.resize(rows.size());
  int64_t off = 0;
  for (size_t q = 0; q < rows.size(); ++q) {
    FF_CHECK(off + rows[q] * width < (int64_t(1) << 31), "collective too large for MPI int counts");
    counts[q] = static_cast<int>(rows[q] * width);
    displs[q] = static_cast<int>(off);
    off += counts[q];
  }
}
}  // namespace

void Communicator::all_gather_v(float* out, const float* in, const std::vector<int64_t>& rows, int64_t width) const {
  FF_CHECK(static_cast<int>(rows.size()) == size_, "all_gather_v: %zu counts for a group of %d", rows.size(), size_);
  if (size_ == 1) {
    std::copy(in, in + rows[0] * width, out);
    return;
  }
  std::vector<int> counts, displs;
  counts_of(rows, width, counts, displs);
  CollectiveScope scope(*this, "all_gather_v", rows[static_cast<size_t>(rank_)] * width);
  check_mpi(MPI_Allgatherv(in, counts[static_cast<size_t>(rank_)], MPI_FLOAT, out, counts.data(), displs.data(),
                           MPI_FLOAT, comm_), "allgatherv");
}

void Communicator::reduce_scatter_v(float* out, const float* in, const std::vector<int64_t>& rows, int64_t width) const {
  FF_CHECK(static_cast<int>(rows.size()) == size_, "reduce_scatter_v: %zu counts for a group of %d", rows.size(), size_);
  if (size_ == 1) {
    std::copy(in, in + rows[0] * width, out);
    return;
  }
  std::vector<int> counts, displs;
  counts_of(rows, width, counts, displs);
  CollectiveScope scope(*this, "reduce_scatter_v", rows[static_cast<size_t>(rank_)] * width);
  check_mpi(MPI_Reduce_scatter(in, out, counts.data(), MPI_FLOAT, MPI_SUM, comm_), "reduce_scatter");
}

void Communicator::send(const float* data, int64_t n, int dest, int tag) const {
  FF_CHECK(n < (int64_t(1) << 31), "send of %lld floats is too large for MPI int counts", (long long)n);
  CollectiveScope scope(*this, "send", n);
  MPI_Request req;
  check_mpi(MPI_Isend(data, static_cast<int>(n), MPI_FLOAT, dest, tag, comm_, &req), "isend");
  pending_sends_.push_back(req);
}

void Communicator::send(const float* data, int64_t n, int dest, int tag, std::vector<MPI_Request>& requests) const {
  FF_CHECK(n < (int64_t(1) << 31), "send of %lld floats is too large for MPI int counts", (long long)n);
  CollectiveScope scope(*this, "send", n);
  MPI_Request req;
  check_mpi(MPI_Isend(data, static_cast<int>(n), MPI_FLOAT, dest, tag, comm_, &req), "isend");
  requests.push_back(req);
}

void Communicator::wait(std::vector<MPI_Request>& requests) {
  if (requests.empty()) return;
  check_mpi(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "waitall");
  requests.clear();
}

void Communicator::recv(float* data, int64_t n, int src, int tag) const {
  FF_CHECK(n < (int64_t(1) << 31), "recv of %lld floats is too large for MPI int counts", (long long)n);
  CollectiveScope scope(*this, "recv", n);
  check_mpi(MPI_Recv(data, static_cast<int>(n), MPI_FLOAT, src, tag, comm_, MPI_STATUS_IGNORE), "recv");
}

void Communicator::wait_sends() const {
  if (pending_sends_.empty()) return;
  CollectiveScope scope(*this, "wait_sends", static_cast<int64_t>(pending_sends_.size()));
  check_mpi(MPI_Waitall(static_cast<int>(pending_sends_.size()), pending_sends_.data(), MPI_STATUSES_IGNORE),
            "waitall");
  pending_sends_.clear();
}

Communicator Communicator::self() {
  Communicator c;
  c.comm_ = MPI_COMM_SELF;
  c.rank_ = 0;
  c.size_ = 1;
  return c;
}

void abort_job(const std::string& message) {
  std::fprintf(stderr, "fivefold: error: %s\n", message.c_str());
  std::fflush(stderr);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  int size = 1;
  if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

void abort_job_once(const std::string& message) {
  int initialized = 0, finalized = 0, rank = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) std::this_thread::sleep_for(std::chrono::seconds(3));
  abort_job(message);
}

}  // namespace ff
