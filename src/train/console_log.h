// The lead rank's log lines, written to stdout by a thread of their own so that training never
// waits on a terminal or on mpirun's forwarding of output: line() queues and returns. While stdout
// takes nothing, at most kMaxQueued lines wait; older ones are dropped and counted, and the count
// is printed once output flows again (metrics.jsonl keeps every step whatever happens here).
// Lines go out with write(2) on descriptor 1, not through stdio, so a blocked write holds no stdio
// lock that the rest of the process could wait on.
#pragma once
#include <memory>
#include <string>

namespace ff {

class ConsoleLog {
 public:
  static constexpr size_t kMaxQueued = 1024;
  ConsoleLog();  // flushes stdio's stdout first, so earlier printf output comes before these lines
  // Writes what is queued if stdout takes it within a few seconds; otherwise leaves the writer
  // blocked (it owns its state) and returns, so that a run can end however stdout behaves.
  ~ConsoleLog();
  ConsoleLog(const ConsoleLog&) = delete;
  ConsoleLog& operator=(const ConsoleLog&) = delete;

  void line(std::string text);  // one line, without its newline

 private:
  struct State;
  static void drain(const std::shared_ptr<State>& s);  // the writer thread
  std::shared_ptr<State> state_;
};

}  // namespace ff
