// A file written so that it is either absent (or its previous version) or complete: the bytes go
// to PATH.tmp, which is fsynced and then renamed over PATH. Every write is checked; a failure is
// an error naming the file, and the partial .tmp is removed.
#pragma once
#include <cstddef>
#include <string>

namespace ff {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // without commit(): removes the .tmp, leaving PATH as it was
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void commit();  // fsync, close, rename over PATH

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

void write_file_atomically(const std::string& path, const std::string& bytes);

// A log a run appends records to (metrics.jsonl): each line goes to the file in one write() and
// is checked. A failed write (a full disk) is retried for a few seconds, since space may come
// back; if it still fails the error names the file and the reason, and the line is not lost
// silently: the run ends there.
class AppendFile {
 public:
  AppendFile(const std::string& path, bool truncate);
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  // line: one record without its newline.
  void write_line(const std::string& line);

 private:
  std::string path_;
  int fd_ = -1;
  off_t end_ = 0;  // bytes of the file's complete lines
};

}  // namespace ff
