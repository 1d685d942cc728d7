// An advisory lock held by one process on a path (flock on PATH, which holds the owner's pid and
// start time): two runs into one out_dir, or two preparations of one dataset, would overwrite each
// other's files. The kernel releases the lock when its holder exits, however it ends (kill -9
// included), so a lock file left behind never blocks a later run.
#pragma once
#include <string>

namespace ff {

class FileLock {
 public:
  // Takes the lock or throws a UserError naming `what`, the path and the process that holds it
  // (pid and since when), and saying what to do. Does not wait.
  FileLock(const std::string& path, const std::string& what);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ff
