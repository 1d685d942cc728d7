// The recipe commands built on training runs: `fivefold upcycle` and `fivefold align` (rm, dpo,
// spin, ppo, steerlm attribute-model | annotate | sft). Each presets the fields of its recipe on the
// run flags (the user's flags win where the recipe allows) and runs it like train does.
#pragma once
#include <CLI/CLI.hpp>
#include <map>
#include <string>

#include "cli/cli_config.h"

namespace ff {

// `fivefold align steerlm annotate`.
struct AnnotateOptions {
  std::string model_path, data_path, output_path, chat_template;
  int64_t micro_batch = 8, threads = 0;
  std::map<std::string, std::string> layout;
};

// The commands' flags and their CLI apps: registered once, read after parsing (do not move it).
struct AlignCommands {
  RunConfigFlags upcycle_flags, rm_flags, dpo_flags, spin_flags, ppo_flags, steer_attr_flags, steer_sft_flags;
  AnnotateOptions annotate;
  std::string upcycle_out;
  CLI::App *upcycle = nullptr, *align_rm = nullptr, *align_dpo = nullptr, *align_spin = nullptr, *align_ppo = nullptr,
           *steer_attr = nullptr, *steer_sft = nullptr, *steer_annotate = nullptr;
};

void add_align_commands(CLI::App& app, RunConfig& defaults, bool& print_config, AlignCommands& cmds);
// Runs the one that was given: its exit code; -1 when none of them was.
int run_align_command(const AlignCommands& cmds, bool print_config);

}  // namespace ff
