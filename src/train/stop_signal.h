// Graceful stop on SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 (the last two are what mpirun forwards to
// the ranks and waits on: `kill -USR1 <mpirun pid>` stops a multi-rank job with a checkpoint). The handler only sets a flag (async-signal-safe); the
// training loop reads it at the end of each step, agrees on it across ranks, saves a checkpoint
// and returns. A second signal while the flag is set takes the default action (kills), so a stuck
// run can still be interrupted from the keyboard.
//
// The flag is the one piece of process-wide mutable state in fivefold: a signal handler cannot
// reach anything else. It lives in stop_signal.cpp; StopSignalGuard installs the handlers for a
// scope and restores the previous ones.
#pragma once

namespace ff {

class StopSignalGuard {
 public:
  StopSignalGuard();   // installs handlers for the stop signals and clears the flag
  ~StopSignalGuard();  // restores the previous handlers
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

 private:
  struct Saved;
  Saved* saved_;
};

// The signal number that asked to stop, or 0.
int stop_requested();
// Sets the flag as a signal would (tests).
void request_stop(int signo);

}  // namespace ff
