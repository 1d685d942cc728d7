// The run commands' shared path: flags -> a resolved, checked RunConfig -> a job on its grid.
#include "cli/cli_config.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/config_json.h"
#include "parallel/thread_count.h"
#include "train/model_source.h"
#include "train/run_checkpoint.h"
#include "train/upcycle.h"

namespace ff {

void RunConfigFlags::add_to(CLI::App& app, RunConfig& d) {
  app.add_option("--config", config_path, "JSON run config {\"model\": {...}, \"optim\": {...}, \"train\": {...}, "
                                          "\"parallel\": {...}}; flags override it");
  CliRegistrar m{app, given, "Model"}, o{app, given, "Optimizer"}, t{app, given, "Training"}, p{app, given, "Parallel"};
  d.model.visit_fields(m);
  d.optim.visit_fields(o);
  d.train.visit_fields(t);
  d.parallel.visit_fields(p);
}

RunConfig RunConfigFlags::resolve() const {
  RunConfig c;
  nlohmann::json file;  // the config file's document, when there is one
  if (!config_path.empty()) {
    std::ifstream f(config_path);
    FF_CHECK(f.good(), "--config %s: cannot open the file", config_path.c_str());
    std::stringstream ss;
    ss << f.rdbuf();
    c = run_config_from_json(ss.str(), config_path);
    file = nlohmann::json::parse(ss.str());  // valid: run_config_from_json parsed it
  } else if (given.count("resume")) {
    c = checkpoint_run_config(given.at("resume"));  // a resumed run keeps its config; flags override
  } else {
    c.model = model_preset(c.train.model_preset);
  }
  std::vector<std::string> errors;
  if (given.count("model_preset")) {
    // The flag's preset replaces the file's, and the file's model fields still apply on top of it
    // (preset, then file, then flags).
    CliApplier a{given, "train", errors};
    TrainConfig t = c.train;
    t.visit_fields(a);
    try {
      c.model = model_preset(t.model_preset);
      if (file.contains("model")) config_from_json(c.model, file["model"], "model", errors);
    } catch (const Error& e) {
      errors.push_back(std::string("--model_preset: ") + e.what());
    }
  }
  CliApplier m{given, "model", errors}, o{given, "optim", errors}, t{given, "train", errors}, p{given, "parallel", errors};
  c.model.visit_fields(m);
  c.optim.visit_fields(o);
  c.train.visit_fields(t);
  c.parallel.visit_fields(p);
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    throw UserError("bad command line:" + all);
  }
  if (!c.train.init_from.empty() && c.train.resume.empty()) {
    adopt_init_source(c);
    // Online upcycling: the model trained is the dense source's MoE upcycle (train/upcycle.h).
    if (c.train.upcycle_experts > 0) c.model = upcycled_config(c.model, UpcycleOptions::of(c.train));
  }
  return c;
}

// train.init_from: the model fields start from the source's architecture, then the config file's
// model section and the model flags apply on top (so --seq_len or --precision still choose); the
// tokenizer is the source's own unless the file or a flag names one.
void RunConfigFlags::adopt_init_source(RunConfig& c) const {
  const ModelSource src = open_model_source(c.train.init_from);
  nlohmann::json file;
  if (!config_path.empty()) file = nlohmann::json::parse(std::ifstream(config_path));
  std::vector<std::string> errors;
  c.model = src.config.model;
  c.train.model_preset = "";  // the architecture is the source's, not a preset's
  if (file.contains("model")) config_from_json(c.model, file["model"], "model", errors);
  CliApplier m{given, "model", errors};
  c.model.visit_fields(m);
  FF_CHECK(errors.empty(), "%s", join_problems(errors).c_str());
  const bool named = given.count("tokenizer_type") || given.count("tokenizer_path") ||
                     (file.contains("train") && (file["train"].contains("tokenizer_type") ||
                                                 file["train"].contains("tokenizer_path")));
  if (named) return;
  if (!src.tokenizer) {
    c.train.tokenizer_type = src.config.train.tokenizer_type;
    c.train.tokenizer_path = src.config.train.tokenizer_path;
    return;
  }
  c.train.tokenizer_type = src.tokenizer->type;
  c.train.tokenizer_path = materialise_tokenizer(*src.tokenizer, c.train.out_dir, Communicator::world());
}

void check_run_config(const RunConfig& c, int world) {
  auto errors = c.validate(world);
  if (errors.empty()) return;
  std::string all = join_problems(errors);
  // A resumed run starts from the checkpoint's config, its layout included: a job of another
  // size must say its own.
  const bool layout = std::any_of(errors.begin(), errors.end(), [](const std::string& e) {
    return e.find("world size") != std::string::npos || e.find("ranks") != std::string::npos;
  });
  if (!c.train.resume.empty() && layout)
    all += strprintf("\n  (--resume starts from the checkpoint's config, parallel layout included: give this job's "
                     "layout for its %d rank%s, e.g. --tp, --pp, --cp, --ep, --etp, --sequence_parallel%s)", world,
                     world == 1 ? "" : "s", c.train.ppo_critic_ranks > 0 ? ", --ppo_critic_ranks" : "");
  throw UserError(strprintf("invalid configuration (%zu problem(s)):%s", errors.size(), all.c_str()));
}

// OpenMP threads per rank: train.threads if set; else OMP_NUM_THREADS if the user set it; else the
// CPUs the launcher gave the rank, shared with the ranks of its node bound to the same ones
// (parallel/thread_count.h), so `mpirun -np 2` on 2 cores runs 1 thread per rank instead of
// oversubscribing the cores, and ranks bound to a socket each use their socket's share.
void set_threads(const RunConfig& c) {
  if (c.train.threads > 0) {
    omp_set_num_threads(static_cast<int>(c.train.threads));
    return;
  }
  if (std::getenv("OMP_NUM_THREADS")) return;
  omp_set_num_threads(default_thread_count());
}

// Resolves the run's config, checks it (once, the same on every rank) and prints it with
// --print_config, or runs `job` on the world (run_job: on the layout's grid).
int run_world_job(const RunConfigFlags& flags, bool print_config,
                  const std::function<void(RunConfig&, const Communicator&)>& job) {
  RunConfig c = flags.resolve();
  Communicator world = Communicator::world();
  check_run_config(c, world.size());
  check_same_config_on_every_rank(c, world);
  if (print_config) {
    std::printf("%s\n", run_config_to_json(c).c_str());
    return 0;
  }
  set_threads(c);
  job(c, world);
  return 0;
}

int run_job(const RunConfigFlags& flags, bool print_config,
            const std::function<void(RunConfig&, const ParallelGrid&)>& job) {
  return run_world_job(flags, print_config, [&](RunConfig& c, const Communicator& world) {
    ParallelGrid grid(world, c.parallel);
    job(c, grid);
  });
}

}  // namespace ff
