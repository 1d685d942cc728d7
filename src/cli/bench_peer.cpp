#include "cli/bench_peer.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string_view>
#include <vector>

#include "cli/cli_config.h"
#include "core/check.h"

extern char** environ;

namespace ff {

// The source tree's bench/torch_peer.py: FF_SOURCE_DIR (given to this file by CMake) if the
// script is there, else ../bench beside the binary's folder (build/fivefold -> bench/).
std::string default_peer_script() {
  namespace fs = std::filesystem;
  std::error_code ec;
#ifdef FF_SOURCE_DIR
  const fs::path source = fs::path(FF_SOURCE_DIR) / "bench" / "torch_peer.py";
  if (fs::is_regular_file(source, ec)) return source.string();
#endif
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path().parent_path() / "bench" / "torch_peer.py";
    if (fs::is_regular_file(beside, ec)) return beside.string();
  }
#ifdef FF_SOURCE_DIR
  return source.string();  // missing; the error will name it
#else
  return "bench/torch_peer.py";
#endif
}

namespace {

// An argument as a POSIX shell would need it (for printing a command a user can rerun).
std::string shell_quote(const std::string& s) {
  const bool plain = !s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                      "0123456789-_./=:+,@%") == std::string::npos;
  if (plain) return s;
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

// Runs argv (argv[0] looked up in PATH when it has no '/') with the environment `env`, no shell,
// its stdout and stderr merged into one pipe, and calls on_line for each line as it arrives.
// Returns the wait status; fails (naming `what`) if the program cannot be started.
int run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env, const char* what,
                const std::function<void(const std::string&)>& on_line) {
  int fds[2];
  FF_CHECK(pipe2(fds, O_CLOEXEC) == 0, "%s: cannot create a pipe: %s", what, std::strerror(errno));
  std::vector<char*> av, ev;
  for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
  for (const auto& e : env) ev.push_back(const_cast<char*>(e.c_str()));
  av.push_back(nullptr);
  ev.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, av[0], &actions, nullptr, av.data(), ev.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    FF_FAIL("%s: cannot run '%s': %s", what, argv[0].c_str(), std::strerror(rc));
  }
  std::string pending;
  char buf[4096];
  for (;;) {
    const ssize_t got = read(fds[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    pending.append(buf, static_cast<size_t>(got));
    for (size_t eol; (eol = pending.find('\n')) != std::string::npos; pending.erase(0, eol + 1))
      on_line(pending.substr(0, eol));
  }
  if (!pending.empty()) on_line(pending);
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    FF_CHECK(errno == EINTR, "%s: waiting for '%s' failed: %s", what, argv[0].c_str(), std::strerror(errno));
  return status;
}

// The peer's "result: X tokens/s | peak memory Y GiB | PyTorch V, ..." line.
struct PeerResult {
  double tokens_per_s = 0;
  double peak_gib = -1;  // < 0: not printed
  std::string version;   // PyTorch's major.minor, or empty
};

bool parse_peer_result(const std::string& line, PeerResult& r) {
  constexpr std::string_view head = "result: ";
  if (line.rfind(head, 0) != 0) return false;
  char* end = nullptr;
  const double x = std::strtod(line.c_str() + head.size(), &end);
  if (end == line.c_str() + head.size() || std::string_view(end).rfind(" tokens/s", 0) != 0) return false;
  r.tokens_per_s = x;
  if (const size_t at = line.find("peak memory "); at != std::string::npos) {
    const char* p = line.c_str() + at + 12;
    const double gib = std::strtod(p, &end);
    if (end != p) r.peak_gib = gib;
  }
  if (const size_t at = line.find("PyTorch "); at != std::string::npos) {
    std::string v = line.substr(at + 8, line.find_first_of(" ,|", at + 8) - (at + 8));
    const size_t dot = v.find('.');
    const size_t second = dot == std::string::npos ? std::string::npos : v.find('.', dot + 1);
    r.version = v.substr(0, second);  // "1.13.0a0" -> "1.13"
  }
  return true;
}

// glibc malloc settings for the peer: never serve large blocks by mmap and never give freed memory
// back to the kernel, so PyTorch's per-step activation buffers are reused instead of being
// mapped, zero-filled by the kernel and unmapped again on every step (worth 10-45% to PyTorch on
// this machine). It is how a careful user would run PyTorch on CPU, so the peer runs at its best.
constexpr const char* kPeerGlibcTunables = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736";

}  // namespace

// Whether `program` can be started: an executable file at that path, or, for a bare name, in PATH
// (as posix_spawnp looks it up).
bool executable_found(const std::string& program) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto ok = [&](const fs::path& p) { return fs::is_regular_file(p, ec) && access(p.c_str(), X_OK) == 0; };
  if (program.empty()) return false;
  if (program.find('/') != std::string::npos) return ok(program);
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/bin:/usr/bin";
  for (;;) {
    const size_t colon = dirs.find(':');
    const std::string_view dir = dirs.substr(0, colon);
    if (ok(fs::path(dir.empty() ? "." : std::string(dir)) / program)) return true;
    if (colon == std::string_view::npos) return false;
    dirs.remove_prefix(colon + 1);
  }
}

void run_peer(RunConfig c, const PeerOptions& peer, int64_t steps, int64_t warmup, const BenchResult& ff) {
  constexpr const char* what = "bench --peer";
  // The run config the peer builds its model from, as `fivefold train --print_config` writes it.
  const std::string tmpl = (std::filesystem::temp_directory_path() / "fivefold-peer-XXXXXX.json").string();
  std::vector<char> path(tmpl.begin(), tmpl.end());
  path.push_back('\0');
  const int fd = mkstemps(path.data(), 5);
  FF_CHECK(fd >= 0, "%s: cannot create the temporary config %s: %s", what, tmpl.c_str(), std::strerror(errno));
  struct Remove {
    const char* p;
    ~Remove() { std::remove(p); }
  } remove_config{path.data()};
  {
    const std::string json = run_config_to_json(c) + "\n";
    size_t done = 0;
    while (done < json.size()) {
      const ssize_t n = write(fd, json.data() + done, json.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = errno;
        close(fd);
        FF_FAIL("%s: cannot write the temporary config %s: %s", what, path.data(), std::strerror(err));
      }
      done += static_cast<size_t>(n);
    }
    FF_CHECK(close(fd) == 0, "%s: cannot write the temporary config %s: %s", what, path.data(), std::strerror(errno));
  }

  const bool bf16 = c.model.precision == Precision::bf16;
  std::vector<std::string> argv = {peer.python, "-u", peer.script, path.data(), "--steps", std::to_string(steps),
                                   "--warmup", std::to_string(warmup), "--threads", std::to_string(ff.threads)};
  if (bf16) argv.push_back("--bf16");  // bf16 autocast: bf16 GEMMs, fp32 master weights, as fivefold's bf16
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string_view kv(*e);
    if (!kv.starts_with("OMP_NUM_THREADS=") && !kv.starts_with("GLIBC_TUNABLES=")) env.emplace_back(kv);
  }
  env.push_back("OMP_NUM_THREADS=" + std::to_string(ff.threads));  // the same thread count as fivefold's
  env.push_back(std::string("GLIBC_TUNABLES=") + kPeerGlibcTunables);
  std::string shown = std::string("GLIBC_TUNABLES=") + kPeerGlibcTunables + " OMP_NUM_THREADS=" + std::to_string(ff.threads);
  for (const auto& a : argv) shown += " " + shell_quote(a);
  std::printf("bench: the PyTorch peer: %s\n", shown.c_str());
  std::fflush(stdout);

  PeerResult r;
  bool found = false, no_torch = false;
  const int status = run_program(argv, env, what, [&](const std::string& line) {
    std::printf("peer: %s\n", line.c_str());
    std::fflush(stdout);
    if (parse_peer_result(line, r)) found = true;
    if (line.find("No module named 'torch'") != std::string::npos) no_torch = true;
  });
  if (WIFSIGNALED(status))
    FF_FAIL("%s: the PyTorch peer (%s) was killed by signal %d (%s)", what, peer.script.c_str(), WTERMSIG(status),
            strsignal(WTERMSIG(status)));
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (no_torch)
    FF_FAIL("%s: PyTorch is not installed for %s (Debian: apt-get install python3-torch), or pass --peer_python with "
            "a Python that has it", what, peer.python.c_str());
  if (code != 0)
    FF_FAIL("%s: the PyTorch peer (%s %s) failed with exit status %d; its output is above, each line prefixed 'peer: '",
            what, peer.python.c_str(), peer.script.c_str(), code);
  if (!found)
    FF_FAIL("%s: the PyTorch peer (%s) exited without a 'result: X tokens/s' line", what, peer.script.c_str());
  FF_CHECK(std::isfinite(r.tokens_per_s) && r.tokens_per_s > 0, "%s: the PyTorch peer reported %g tokens/s", what,
           r.tokens_per_s);
  const double gib = 1024.0 * 1024 * 1024;
  const std::string peer_peak = r.peak_gib >= 0 ? strprintf(", peak %.2f GiB", r.peak_gib) : std::string();
  std::printf("compare: fivefold %.1f tokens/s (%s, peak %.2f GiB), PyTorch %s%s%.1f tokens/s (%s%s), ratio %.2fx (of the median steps)\n",
              ff.tokens_per_s, enum_to_string(c.model.precision).c_str(), ff.peak_rss_bytes / gib, r.version.c_str(),
              r.version.empty() ? "" : " ", r.tokens_per_s, bf16 ? "bf16 autocast" : "fp32", peer_peak.c_str(),
              ff.tokens_per_s / r.tokens_per_s);
}

}  // namespace ff
