// `fivefold search`: the architecture search of recipes/prune/search.h on the command line. Every
// train flag applies to the candidates' distillation runs (--steps, --lr, --micro_batch, the
// layout, ...); --init_from names the model to compress, which is also their teacher.
#pragma once
#include <CLI/CLI.hpp>

#include "cli/cli_config.h"
#include "recipes/prune/search.h"

namespace ff {

struct SearchCommand {
  RunConfigFlags flags;
  SearchOptions options;
  CLI::App* app = nullptr;
};

void add_search_command(CLI::App& app, RunConfig& defaults, SearchCommand& cmd);
int run_search_command(const SearchCommand& cmd);

}  // namespace ff
