#include "cli/search_command.h"

namespace ff {

void add_search_command(CLI::App& app, RunConfig& defaults, SearchCommand& cmd) {
  SearchOptions& o = cmd.options;
  auto* s = cmd.app = app.add_subcommand(
      "search", "architecture search (Minitron): prune --init_from to candidate sizes within --target_params, distil "
                "each for --steps from the original, rank by validation loss beside decode speed");
  s->add_option("--target_params", o.target_params, "the parameter budget of a candidate (total parameters)")
      ->required();
  s->add_option("--search_tolerance", o.tolerance, "candidates have at least (1 - this) x --target_params parameters")
      ->capture_default_str();
  s->add_option("--search_candidates", o.candidates, "candidates distilled, at most (the largest within the budget)")
      ->capture_default_str();
  s->add_option("--search_depth", o.depth, "also try fewer layers at full width")->capture_default_str();
  s->add_option("--calib_samples", o.calib_samples, "calibration windows of the data for the importance scores")
      ->capture_default_str();
  s->add_option("--decode_batch", o.decode_batch, "sequences decoded together to measure decode speed")
      ->capture_default_str();
  s->add_option("--decode_tokens", o.decode_tokens, "new tokens per sequence when measuring decode speed")
      ->capture_default_str();
  cmd.flags.add_to(*s, defaults);
}

int run_search_command(const SearchCommand& cmd) {
  if (cmd.flags.given.count("teacher"))
    throw UserError("fivefold search: the teacher is --init_from, the model being compressed; drop --teacher");
  if (!cmd.flags.given.count("init_from"))
    throw UserError("fivefold search: give the model to compress with --init_from (a model file, checkpoint or Hugging "
                    "Face folder)");
  return run_job(cmd.flags, false, [&](RunConfig& c, const ParallelGrid& grid) { run_search(c, cmd.options, grid); });
}

}  // namespace ff
