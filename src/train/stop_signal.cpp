#include "train/stop_signal.h"

#include <csignal>

namespace ff {

namespace {
volatile std::sig_atomic_t g_stop_signal = 0;  // see stop_signal.h: the one process-wide flag

extern "C" void on_stop_signal(int signo) {
  if (g_stop_signal != 0) {  // second signal: give up on the graceful path
    std::signal(signo, SIG_DFL);
    std::raise(signo);
    return;
  }
  g_stop_signal = signo;
}
}  // namespace

// The signals that ask for a graceful stop. SIGUSR1 and SIGUSR2 are the ones Open MPI's mpirun
// forwards to every rank and then lets the job finish on; on SIGTERM and SIGINT mpirun kills the
// ranks about a second after forwarding them (docs/reliability.md).
constexpr int kStopSignals[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
constexpr int kNumStopSignals = sizeof(kStopSignals) / sizeof(kStopSignals[0]);

struct StopSignalGuard::Saved {
  struct sigaction previous[kNumStopSignals] {};
};

StopSignalGuard::StopSignalGuard() : saved_(new Saved) {
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int i = 0; i < kNumStopSignals; ++i) sigaction(kStopSignals[i], &sa, &saved_->previous[i]);
}

StopSignalGuard::~StopSignalGuard() {
  for (int i = 0; i < kNumStopSignals; ++i) sigaction(kStopSignals[i], &saved_->previous[i], nullptr);
  delete saved_;
}

int stop_requested() { return g_stop_signal; }
void request_stop(int signo) { g_stop_signal = signo; }

}  // namespace ff
