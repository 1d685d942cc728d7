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

struct StopSignalGuard::Saved {
  struct sigaction term {}, intr {};
};

StopSignalGuard::StopSignalGuard() : saved_(new Saved) {
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, &saved_->term);
  sigaction(SIGINT, &sa, &saved_->intr);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGTERM, &saved_->term, nullptr);
  sigaction(SIGINT, &saved_->intr, nullptr);
  delete saved_;
}

int stop_requested() { return g_stop_signal; }
void request_stop(int signo) { g_stop_signal = signo; }

}  // namespace ff
