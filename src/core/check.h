// Always-on checks. FF_CHECK(cond, "printf-style fmt", args...) throws ff::Error carrying the
// rank, file:line and the formatted values. The program's entry point turns an uncaught Error
// into a message and MPI_Abort, so one failing rank ends the whole job instead of hanging it;
// tests catch the exception and assert on its message.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace ff {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An error in what every rank was given alike (flags, config files): every rank finds the same
// one, so one rank reports it for all (parallel/comm.h abort_job_once).
class UserError : public Error {
 public:
  using Error::Error;
};

// The rank printed in messages; set once by the communicator layer at start-up (a plain
// process-wide fact like the pid, not mutable model state).
int& error_rank();

[[noreturn]] void fail(const char* file, int line, const std::string& message);

template <class... Args>
std::string strprintf(const char* fmt, Args... args) {
  if constexpr (sizeof...(Args) == 0) {
    return std::string(fmt);
  } else {
    int n = std::snprintf(nullptr, 0, fmt, args...);
    std::string s(static_cast<size_t>(n > 0 ? n : 0), '\0');
    std::snprintf(s.data(), s.size() + 1, fmt, args...);
    return s;
  }
}

// "\n  p1\n  p2 ...": a list of problems for one error message, each on its own indented line.
inline std::string join_problems(const std::vector<std::string>& problems) {
  std::string all;
  for (const auto& p : problems) all += "\n  " + p;
  return all;
}

}  // namespace ff

#define FF_CHECK(cond, ...)                                                    \
  do {                                                                         \
    if (!(cond)) ::ff::fail(__FILE__, __LINE__, ::ff::strprintf(__VA_ARGS__)); \
  } while (0)

// A user error: the message must name the field, file or flag and say what to do.
#define FF_FAIL(...) ::ff::fail(__FILE__, __LINE__, ::ff::strprintf(__VA_ARGS__))
