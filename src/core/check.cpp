#include "core/check.h"

namespace ff {

int& error_rank() {
  static int rank = 0;
  return rank;
}

void fail(const char* file, int line, const std::string& message) {
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  throw Error(strprintf("[rank %d] %s:%d: %s", error_rank(), base, line, message.c_str()));
}

}  // namespace ff
