// `fivefold prune` (recipes/prune/prune_run.h): its flags and its run.
#pragma once
#include <CLI/CLI.hpp>
#include <map>
#include <string>

#include "recipes/prune/prune_run.h"

namespace ff {

struct PruneCommand {
  PruneRunOptions options;
  std::map<std::string, std::string> layout;
  CLI::App* app = nullptr;
};

void add_prune_command(CLI::App& app, PruneCommand& cmd);
int run_prune_command(const PruneCommand& cmd);

}  // namespace ff
