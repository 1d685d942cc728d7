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

}  // namespace ff
