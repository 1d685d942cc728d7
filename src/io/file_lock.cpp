#include "io/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "core/check.h"

namespace ff {

namespace {
// The holder's note: "pid 1234 since 2026-12-01 15:40:02 UTC".
std::string read_note(int fd) {
  char buf[128] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "a process that has not written its pid yet" : s;
}
}  // namespace

FileLock::FileLock(const std::string& path, const std::string& what) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw UserError(strprintf("cannot create the lock file '%s' for %s: %s", path.c_str(), what.c_str(),
                                         std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = err == EWOULDBLOCK ? read_note(fd_) : std::string(std::strerror(err));
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK)
      throw UserError(strprintf("cannot lock '%s' for %s: %s", path.c_str(), what.c_str(), holder.c_str()));
    throw UserError(strprintf("%s is in use by another fivefold process (%s; lock %s): wait for it to finish, stop "
                              "it, or use another folder", what.c_str(), holder.c_str(), path.c_str()));
  }
  char when[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string note = strprintf("pid %d since %s\n", static_cast<int>(::getpid()), when);
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, note.data(), note.size(), 0) != static_cast<ssize_t>(note.size())) {
    // The lock holds without its note; the note only helps the error of whoever comes next.
  }
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace ff
