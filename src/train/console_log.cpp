#include "train/console_log.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "core/check.h"

namespace ff {

struct ConsoleLog::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> queue;
  int64_t dropped = 0;
  bool writing = false, done = false;
  std::thread writer;
};

namespace {
// Writes all of text to descriptor 1 (blocking); false if stdout is gone.
bool write_all(const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(STDOUT_FILENO, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    done += static_cast<size_t>(w);
  }
  return true;
}
}  // namespace

ConsoleLog::ConsoleLog() : state_(std::make_shared<State>()) {
  std::fflush(stdout);
  state_->writer = std::thread([s = state_] { drain(s); });
}

void ConsoleLog::drain(const std::shared_ptr<State>& s) {
  std::unique_lock<std::mutex> lock(s->mu);
  while (true) {
    s->cv.wait(lock, [&] { return !s->queue.empty() || s->done; });
    if (s->queue.empty()) break;  // done and nothing left
    std::string text;
    if (s->dropped > 0)
      text = strprintf("[%lld log lines dropped: stdout was not taking output]\n", (long long)s->dropped);
    s->dropped = 0;
    for (const auto& l : s->queue) text += l + "\n";
    s->queue.clear();
    s->writing = true;
    lock.unlock();
    const bool ok = write_all(text);  // may block: the trainer is not waiting on it
    lock.lock();
    s->writing = false;
    s->cv.notify_all();
    if (!ok) break;  // stdout closed: nothing more can be shown
  }
  s->writing = false;
  s->cv.notify_all();
}

ConsoleLog::~ConsoleLog() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->done = true;
  state_->cv.notify_all();
  const bool drained = state_->cv.wait_for(lock, std::chrono::seconds(3),
                                           [&] { return state_->queue.empty() && !state_->writing; });
  lock.unlock();
  if (drained)
    state_->writer.join();
  else
    state_->writer.detach();  // blocked on stdout; it holds its own reference to the state
}

void ConsoleLog::line(std::string text) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->queue.size() >= kMaxQueued) {
    state_->queue.pop_front();
    ++state_->dropped;
  }
  state_->queue.push_back(std::move(text));
  state_->cv.notify_all();
}

}  // namespace ff
