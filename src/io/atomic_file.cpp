#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/check.h"

namespace ff {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  FF_CHECK(fd_ >= 0, "cannot write '%s': %s", tmp_.c_str(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ < 0) return;
  ::close(fd_);
  std::remove(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const char* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, c, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    FF_CHECK(w >= 0, "writing '%s' failed: %s", tmp_.c_str(), std::strerror(errno));
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  FF_CHECK(::fsync(fd_) == 0, "fsync of '%s' failed: %s", tmp_.c_str(), std::strerror(errno));
  const int closed = ::close(fd_);
  fd_ = -1;
  FF_CHECK(closed == 0, "closing '%s' failed: %s", tmp_.c_str(), std::strerror(errno));
  FF_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename '%s' to '%s': %s", tmp_.c_str(),
           path_.c_str(), std::strerror(errno));
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

AppendFile::AppendFile(const std::string& path, bool truncate) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
  if (fd_ < 0) throw UserError(strprintf("cannot write '%s': %s", path.c_str(), std::strerror(errno)));
  end_ = ::lseek(fd_, 0, SEEK_END);
  if (end_ < 0) end_ = 0;  // not seekable (a pipe, /dev/full): written as it comes
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::write_line(const std::string& line) {
  const std::string text = line + "\n";
  constexpr int kTries = 5;  // about 3 s in all: 0.2, 0.4, 0.8, 1.6 s apart
  int err = 0;
  for (int attempt = 0; attempt < kTries; ++attempt) {
    if (attempt > 0) ::usleep(static_cast<useconds_t>(100000) << attempt);
    // pwrite at the end of the complete lines: a retry after a short write overwrites the torn
    // part instead of leaving it in the file.
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t w = ::pwrite(fd_, text.data() + done, text.size() - done, end_ + static_cast<off_t>(done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == ESPIPE) {  // not seekable
        const ssize_t v = ::write(fd_, text.data() + done, text.size() - done);
        if (v < 0 && errno == EINTR) continue;
        if (v <= 0) break;
        done += static_cast<size_t>(v);
        continue;
      }
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    if (done == text.size()) {
      end_ += static_cast<off_t>(done);
      return;
    }
    err = errno != 0 ? errno : ENOSPC;
  }
  throw UserError(strprintf("cannot write to '%s': %s (tried %d times over about 3 s); the run stops here, its last "
                            "checkpoint is intact: free space and continue with --resume",
                            path_.c_str(), std::strerror(err), kTries));
}

}  // namespace ff
