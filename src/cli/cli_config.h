// Command-line flags derived from the config field lists: every field of every section is a flag
// --name VALUE (booleans also take true/false), with its help text and current default in --help.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "core/fields.h"
#include "parallel/grid.h"
#include "train/config.h"

namespace ff {

// A field's type as a flag shows it (INT, UINT, FLOAT, BOOL, TEXT, or an enum's choices a|b|c)
// and its value as text (empty for an empty string).
template <class T>
std::pair<std::string, std::string> flag_type_and_default(const T& field) {
  if constexpr (FieldEnum<T>) return {enum_choices(T{}), enum_to_string(field)};
  else if constexpr (std::is_same_v<T, bool>) return {"BOOL", field ? "true" : "false"};
  else if constexpr (std::is_integral_v<T>) return {std::is_unsigned_v<T> ? "UINT" : "INT", std::to_string(field)};
  else if constexpr (std::is_floating_point_v<T>) return {"FLOAT", strprintf("%g", static_cast<double>(field))};
  else return {"TEXT", field};
}

// Registers one string-valued option per field; values land in `given` keyed by field name.
struct CliRegistrar {
  CLI::App& app;
  std::map<std::string, std::string>& given;
  std::string group;
  // --help shows each flag's type and default (flag_type_and_default); the value is parsed by
  // CliApplier, whose errors name the flag.
  template <class T>
  void operator()(T& field, const char* name, const char* help) {
    const auto [type, def] = flag_type_and_default(field);
    std::string flag = std::string("--") + name;
    app.add_option_function<std::string>(flag, [&g = given, n = std::string(name)](const std::string& v) { g[n] = v; },
                                         std::string(help) + " [default " + (def.empty() ? "\"\"" : def) + "]")
        ->type_name(type)
        ->group(group);
  }
};

// Applies flag strings to the fields they name; one message per unparsable value.
struct CliApplier {
  const std::map<std::string, std::string>& given;
  std::string section;
  std::vector<std::string>& errors;
  template <class T>
  void operator()(T& field, const char* name, const char*) {
    auto it = given.find(name);
    if (it == given.end()) return;
    const std::string& v = it->second;
    const std::string where = "--" + std::string(name) + " " + v;
    try {
      if constexpr (FieldEnum<T>) {
        if (!enum_from_string(v, field)) errors.push_back(where + ": must be one of " + enum_choices(T{}));
      } else if constexpr (std::is_same_v<T, bool>) {
        if (v == "true" || v == "1") field = true;
        else if (v == "false" || v == "0") field = false;
        else errors.push_back(where + ": must be true or false");
      } else if constexpr (std::is_integral_v<T>) {
        size_t pos = 0;
        long long x = std::stoll(v, &pos);
        if (pos != v.size()) throw std::invalid_argument(v);
        if (std::is_unsigned_v<T> && x < 0) {  // a negative seed would wrap to a huge one
          errors.push_back(where + ": must be a non-negative integer");
          return;
        }
        field = static_cast<T>(x);
      } else if constexpr (std::is_floating_point_v<T>) {
        size_t pos = 0;
        double x = std::stod(v, &pos);
        if (pos != v.size()) throw std::invalid_argument(v);
        field = static_cast<T>(x);
      } else {
        field = v;
      }
    } catch (const std::exception&) {
      errors.push_back(where + ": not a valid " + (std::is_integral_v<T> ? "integer" : "number"));
    }
  }
};

// All config flags of a run on `app` (grouped by section), plus --config FILE.
struct RunConfigFlags {
  std::string config_path;
  std::map<std::string, std::string> given;
  void add_to(CLI::App& app, RunConfig& defaults);
  // Defaults -> preset -> config file -> flags (-> train.init_from's architecture under the file's
  // and the flags' model fields). Throws ff::Error listing every problem.
  RunConfig resolve() const;

 private:
  void adopt_init_source(RunConfig& c) const;
};

// Every problem of a resolved config for `world` ranks, in one UserError.
void check_run_config(const RunConfig& c, int world);
// OpenMP threads per rank: train.threads if set; else OMP_NUM_THREADS if the user set it; else the
// CPUs the launcher gave the rank, shared with the ranks of its node bound to the same ones.
void set_threads(const RunConfig& c);
// Resolves the run's config, checks it (once, the same on every rank) and prints it with
// --print_config, or runs `job` on the layout's grid.
int run_job(const RunConfigFlags& flags, bool print_config,
            const std::function<void(RunConfig&, const ParallelGrid&)>& job);
// The same for a job that builds its own grids from the world (PPO's rank groups).
int run_world_job(const RunConfigFlags& flags, bool print_config,
                  const std::function<void(RunConfig&, const Communicator&)>& job);

}  // namespace ff
