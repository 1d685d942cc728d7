// fivefold: one binary, subcommands train, generate, bench.
#include <fcntl.h>
#include <omp.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string_view>

#include "cli/bench_peer.h"
#include "cli/cli_config.h"
#include "io/atomic_file.h"
#include "io/config_json.h"
#include "io/jsonl.h"
#include "io/preprocess.h"
#include "io/tokenizer.h"
#include "recipes/spin.h"
#include "train/convert.h"
#include "train/evaluate.h"
#include "train/flops.h"
#include "train/generation.h"
#include "train/model_source.h"
#include "train/run_checkpoint.h"
#include "train/plan.h"
#include "train/sft_data.h"
#include "train/steerlm.h"
#include "train/trainer.h"
#include "train/upcycle.h"

extern char** environ;

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

namespace {

void check_run_config(const RunConfig& c, int world) {
  auto errors = c.validate(world);
  if (errors.empty()) return;
  const std::string all = join_problems(errors);
  throw UserError(strprintf("invalid configuration (%zu problem(s)):%s", errors.size(), all.c_str()));
}

// OpenMP threads per rank: train.threads if set; else OMP_NUM_THREADS if the user set it; else the
// machine's cores shared among the ranks running on it, so `mpirun -np 2` on 2 cores runs 1 thread
// per rank instead of oversubscribing the cores.
void set_threads(const RunConfig& c) {
  if (c.train.threads > 0) {
    omp_set_num_threads(static_cast<int>(c.train.threads));
    return;
  }
  if (std::getenv("OMP_NUM_THREADS")) return;
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 1;
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  omp_set_num_threads(std::max(1, omp_get_num_procs() / local));
}

// The fields an align recipe sets unless the user gave them: preference data and the recipe's
// objective; a reward model also gets the value head, freshly initialised when it starts from a
// language model. An objective of the other recipe is refused.
RunConfigFlags align_recipe(RunConfigFlags flags, const std::string& recipe) {
  auto& g = flags.given;
  const bool rm = recipe == "rm";
  if (g.count("objective")) {
    const std::string o = g.at("objective");
    const bool rm_objective = o == "bradley_terry";
    if (rm != rm_objective || o == "cross_entropy")
      throw UserError(strprintf("fivefold align %s: --objective %s belongs to %s", recipe.c_str(), o.c_str(),
                                rm_objective ? "align rm" : o == "cross_entropy" ? "fivefold train" : "align dpo"));
  }
  g.emplace("objective", rm ? "bradley_terry" : "dpo");
  g.emplace("data_format", "preference");
  if (rm) {
    g.emplace("head", "value");
    g.emplace("init_new", "score.weight");
  }
  return flags;
}

// Resolves the run's config, checks it (once, the same on every rank) and prints it with
// --print_config, or runs `job` on the layout's grid.
int run_job(const RunConfigFlags& flags, bool print_config,
            const std::function<void(RunConfig&, const ParallelGrid&)>& job) {
  RunConfig c = flags.resolve();
  Communicator world = Communicator::world();
  check_run_config(c, world.size());
  check_same_config_on_every_rank(c, world);
  if (print_config) {
    std::printf("%s\n", run_config_to_json(c).c_str());
    return 0;
  }
  set_threads(c);
  ParallelGrid grid(world, c.parallel);
  job(c, grid);
  return 0;
}

// `fivefold align spin` (recipes/spin.h): SFT data in, a DPO run per iteration.
int cmd_spin(RunConfigFlags flags, bool print_config) {
  flags.given.emplace("data_format", "sft");
  return run_job(flags, print_config, [](RunConfig& c, const ParallelGrid& grid) { run_spin(c, grid); });
}

// SteerLM's training steps: the attribute model (attribute data, attribute_regression, a value
// head per attribute, freshly initialised when it starts from a language model) and the
// attribute-conditioned SFT (SFT data, the nemo template). Both need --steerlm_attributes.
RunConfigFlags steerlm_recipe(RunConfigFlags flags, bool attribute_model) {
  auto& g = flags.given;
  if (!g.count("steerlm_attributes"))
    throw UserError("fivefold align steerlm: give --steerlm_attributes, the attribute names (e.g. "
                    "quality,toxicity,humor,creativity)");
  if (attribute_model) {
    g.emplace("data_format", "attributes");
    g.emplace("objective", "attribute_regression");
    g.emplace("head", "value");
    g.emplace("value_outputs", std::to_string(attribute_names(g.at("steerlm_attributes")).size()));
    g.emplace("init_new", "score.weight");
  } else {
    g.emplace("data_format", "sft");
    g.emplace("chat_template", "nemo");
  }
  return flags;
}

// `fivefold upcycle`: offline, the dense --init_from model's MoE upcycle as a model file (every
// expert in one process), with the run config and the source's tokenizer.
int cmd_upcycle(RunConfigFlags flags, const std::string& out_path) {
  FF_CHECK(flags.given.count("init_from"), "fivefold upcycle: give the dense model with --init_from");
  flags.given.emplace("upcycle_experts", "8");
  RunConfig c = flags.resolve();
  FF_CHECK(!out_path.empty(), "fivefold upcycle: give --out FILE (a model file)");
  Communicator world = Communicator::world();
  FF_CHECK(world.size() == 1, "fivefold upcycle writes one model file from one process; to upcycle under a parallel "
           "layout, train --init_from DENSE --upcycle_experts E does it while loading");
  set_threads(c);
  ParallelGrid grid(world, ParallelConfig{});
  const ModelSource src = open_model_source(c.train.init_from);
  DecoderLM model(c.model, grid, c.train.seed);
  const UpcycleOptions o = UpcycleOptions::of(c.train);
  load_model_source(src, model, {}, [&](const TensorFetch& f, const std::string& n, HostTensor& t) {
    return upcycled_tensor(src.config.model, o, f, n, t);
  });
  c.train.init_from = "";
  const TokenizerFile tok = model_tokenizer(src, std::nullopt);
  save_model(model, c, out_path, &tok);
  std::printf("upcycled %s -> %s: pattern %s, %lld experts of %lld (granularity %lld), top-%lld, %s, %s%s; "
              "%.2fM parameters (%.2fM active)\n", src.path.c_str(), out_path.c_str(), c.model.pattern().c_str(),
              (long long)o.experts, (long long)c.model.moe_ffn_hidden, (long long)o.granularity, (long long)o.top_k,
              o.softmax_then_topk ? "softmax then top-k" : "top-k then softmax",
              o.virtual_groups ? "virtual groups" : "random shards", !o.scale ? "" : o.scale_down_only ? strprintf(", down_proj scaled by %.4f",
              upcycle_scale(src.config.model, o)).c_str() : strprintf(", experts scaled by %.4f",
              upcycle_scale(src.config.model, o, "up_proj")).c_str(), count_parameters(c.model) / 1e6,
              count_active_parameters(c.model) / 1e6);
  return 0;
}

int cmd_train(const RunConfigFlags& flags, bool print_config) {
  return run_job(flags, print_config, [](RunConfig& c, const ParallelGrid& grid) { Trainer(c, grid).run(); });
}

struct GenerateOptions {
  std::string model_path = "runs/default/model.safetensors";
  std::string prompt = "In the beginning";
  std::string prompts_file;  // JSONL: one prompt per line ({"prompt": ...} or a JSON string)
  SamplingOptions sampling;
  std::string output = "text";  // text | jsonl
  std::string chat_template = "none";  // wrap each prompt as a user turn of this template
  std::string attributes;              // SteerLM: the requested attribute string (nemo template)
  int64_t threads = 0;
  std::string tokenizer_type, tokenizer_path;  // empty: the model's own tokenizer
  std::map<std::string, std::string> layout;   // --tp, --ep, --pp, ... flags
};

// The tokenizer the user named with --tokenizer_type / --tokenizer_path (either), if any.
std::optional<TokenizerFile> explicit_tokenizer(const std::string& type, const std::string& path) {
  if (type.empty() && path.empty()) return std::nullopt;
  TokenizerType t = TokenizerType::sentencepiece;
  if (!type.empty())
    FF_CHECK(enum_from_string(type, t), "--tokenizer_type %s: must be one of %s", type.c_str(),
             enum_choices(TokenizerType{}).c_str());
  FF_CHECK(t == TokenizerType::byte || !path.empty(), "--tokenizer_type %s needs --tokenizer_path", type.c_str());
  return read_tokenizer_file(t, path);
}

int cmd_eval(const EvalOptions& o, const std::map<std::string, std::string>& layout_flags) {
  std::vector<std::string> errors;
  ParallelConfig pc;
  CliApplier a{layout_flags, "parallel", errors};
  pc.visit_fields(a);
  Communicator world = Communicator::world();
  auto layout = pc.validate(world.size());
  errors.insert(errors.end(), layout.begin(), layout.end());
  FF_CHECK(errors.empty(), "bad command line:%s", join_problems(errors).c_str());
  RunConfig threads;
  set_threads(threads);
  ParallelGrid grid(world, pc);
  const EvalResult r = run_eval(o, grid);
  if (grid.world_rank() == 0)
    std::printf("loss %.6f | perplexity %.4f | bits per byte %.5f | %lld tokens, %lld bytes, %lld windows\n", r.loss,
                r.perplexity, r.bits_per_byte, (long long)r.tokens, (long long)r.bytes, (long long)r.windows);
  return 0;
}

// The prompts of --prompt or --prompts (JSONL: {"prompt": "..."} or a JSON string per line).
std::vector<std::string> read_prompts(const GenerateOptions& g) {
  if (g.prompts_file.empty()) return {g.prompt};
  std::ifstream f(g.prompts_file);
  FF_CHECK(f.good(), "--prompts %s: cannot open the file", g.prompts_file.c_str());
  std::vector<std::string> out;
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      FF_FAIL("--prompts %s line %lld: not valid JSON (%s)", g.prompts_file.c_str(), (long long)n, e.what());
    }
    if (j.is_string()) out.push_back(j.get<std::string>());
    else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) out.push_back(j["prompt"].get<std::string>());
    else FF_FAIL("--prompts %s line %lld: give {\"prompt\": \"...\"} or a JSON string", g.prompts_file.c_str(), (long long)n);
  }
  FF_CHECK(!out.empty(), "--prompts %s holds no prompts", g.prompts_file.c_str());
  return out;
}

// `fivefold align steerlm annotate`: a SteerLM attribute model's predictions (clipped to [0, 4],
// rounded) added to every record of a JSONL file as "attributes": {name: value}.
struct AnnotateOptions {
  std::string model_path, data_path, output_path, chat_template;
  int64_t micro_batch = 8, threads = 0;
  std::map<std::string, std::string> layout;
};

int cmd_steerlm_annotate(const AnnotateOptions& a) {
  const ModelSource src = open_model_source(a.model_path);
  RunConfig c = src.config;
  FF_CHECK(c.model.head == HeadKind::value && !c.train.steerlm_attributes.empty(), "--model %s is not a SteerLM "
           "attribute model (made by fivefold align steerlm attribute-model: a value head and "
           "train.steerlm_attributes)", a.model_path.c_str());
  const auto names = attribute_names(c.train.steerlm_attributes);
  std::vector<std::string> errors;
  c.parallel = ParallelConfig{};
  CliApplier ap{a.layout, "parallel", errors};
  c.parallel.visit_fields(ap);
  Communicator world = Communicator::world();
  auto layout = c.parallel.validate(world.size());
  errors.insert(errors.end(), layout.begin(), layout.end());
  FF_CHECK(errors.empty(), "bad command line:%s", join_problems(errors).c_str());
  c.train.threads = a.threads;
  set_threads(c);
  ParallelGrid grid(world, c.parallel);
  DecoderLM model(c.model, grid, c.train.seed);
  load_model_source(src, model);
  auto tok = make_tokenizer(model_tokenizer(src, std::nullopt));
  ChatTemplate t = c.train.chat_template;
  if (!a.chat_template.empty())
    FF_CHECK(enum_from_string(a.chat_template, t), "--chat_template %s: must be one of %s", a.chat_template.c_str(),
             enum_choices(ChatTemplate{}).c_str());
  std::vector<nlohmann::json> records;
  for_each_jsonl(a.data_path, "--data_path: JSONL records with prompt and response",
                 [&](const nlohmann::json& j, const std::string&) { records.push_back(j); });
  const SftKeys keys{c.train.sft_prompt_key, c.train.sft_response_key, c.train.sft_messages_key};
  const auto values = annotate_attributes(model, grid, *tok, records, t, keys, a.micro_batch);
  if (grid.world_rank() == 0) {
    std::string text;
    for (size_t i = 0; i < records.size(); ++i) {
      nlohmann::json r = records[i];
      for (size_t k = 0; k < names.size(); ++k) r["attributes"][names[k]] = values[i][k];
      text += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    write_file_atomically(a.output_path, text);
    std::printf("annotated %zu records with %s -> %s\n", records.size(), c.train.steerlm_attributes.c_str(),
                a.output_path.c_str());
  }
  return 0;
}

int cmd_generate(const GenerateOptions& g) {
  FF_CHECK(g.output == "text" || g.output == "jsonl", "--output %s: must be text or jsonl", g.output.c_str());
  // A model file, a checkpoint (any parallel layout) or a Hugging Face folder, laid out by the flags.
  const ModelSource src = open_model_source(g.model_path);
  RunConfig c = src.config;
  std::vector<std::string> errors;
  c.parallel = ParallelConfig{};
  CliApplier a{g.layout, "parallel", errors};
  c.parallel.visit_fields(a);
  Communicator world = Communicator::world();
  auto layout = c.parallel.validate(world.size());
  errors.insert(errors.end(), layout.begin(), layout.end());
  FF_CHECK(errors.empty(), "bad command line:%s", join_problems(errors).c_str());
  c.train.threads = g.threads;  // this machine's choice, not the training run's
  set_threads(c);
  ParallelGrid grid(world, c.parallel);
  DecoderLM model(c.model, grid, c.train.seed);
  load_model_source(src, model);
  auto tok = make_tokenizer(model_tokenizer(src, explicit_tokenizer(g.tokenizer_type, g.tokenizer_path)));
  ChatTemplate chat = ChatTemplate::none;
  FF_CHECK(enum_from_string(g.chat_template, chat), "--chat_template %s: must be one of %s", g.chat_template.c_str(),
           enum_choices(ChatTemplate{}).c_str());
  std::vector<std::string> prompts = read_prompts(g);
  std::vector<std::vector<int32_t>> ids;
  FF_CHECK(g.attributes.empty() || chat == ChatTemplate::nemo, "--attributes: SteerLM's attribute string goes after "
           "NeMo's assistant header: add --chat_template nemo");
  if (!g.attributes.empty()) parse_attribute_string(g.attributes);  // name:value,... or an error saying so
  for (const auto& p : prompts)
    ids.push_back(tok->encode(chat == ChatTemplate::none ? p : chat_prompt(p, chat, g.attributes)));
  SamplingOptions sampling = g.sampling;
  if (!g.attributes.empty()) sampling.stop.push_back("<extra_id_1>");  // the end of the assistant's turn
  GenerationStats stats;
  const std::vector<Generated> out = generate(model, grid, *tok, ids, sampling, &stats);
  if (grid.world_rank() != 0) return 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (g.output == "jsonl") {
      // Text cut inside a multi-byte character (byte-level tokenizers) is written with U+FFFD.
      const nlohmann::json rec = {{"prompt", prompts[i]}, {"text", out[i].text}, {"finish", out[i].finish},
                                  {"new_tokens", out[i].tokens.size()}};
      std::printf("%s\n", rec.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("%s%s\n%s", prompts[i].c_str(), out[i].text.c_str(), i + 1 < out.size() ? "\n" : "");
    }
  }
  std::fflush(stdout);
  std::fprintf(stderr, "generated %lld tokens for %zu prompt(s) in %.2f s: %.1f tokens/s (%s, %lld model calls)\n",
               (long long)stats.new_tokens, prompts.size(), stats.seconds,
               stats.seconds > 0 ? static_cast<double>(stats.new_tokens) / stats.seconds : 0.0,
               g.sampling.kv_cache ? "KV cache" : "full recompute", (long long)stats.steps);
  return 0;
}

// Flags of a plain config struct, derived from its field list (as RunConfigFlags does for runs).
template <class Config>
struct FieldFlags {
  std::map<std::string, std::string> given;
  Config defaults;
  void add_to(CLI::App& app, const std::string& group) {
    CliRegistrar r{app, given, group};
    defaults.visit_fields(r);
  }
  Config resolve() const {
    Config c;
    std::vector<std::string> errors;
    CliApplier a{given, "", errors};
    c.visit_fields(a);
    if (!errors.empty()) {
      const std::string all = join_problems(errors);
      FF_FAIL("bad command line:%s", all.c_str());
    }
    return c;
  }
};

int cmd_preprocess(const PreprocessConfig& c) {
  auto errors = c.validate();
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("preprocess:%s", all.c_str());
  }
  auto tok = load_tokenizer(c.tokenizer_type, c.tokenizer_path);
  std::printf("preprocess: %s -> %s.{bin,idx} with %s\n", c.input.c_str(), c.output_prefix.c_str(), tok->describe().c_str());
  preprocess(c, *tok);
  return 0;
}

// Peak resident memory of this process, bytes.
double peak_rss_bytes() {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) * 1024.0;
}

// Times `steps` training steps of `c` after `warmup` untimed ones and prints them. Everything it
// allocates (model, optimizer, activations) is freed when it returns.
BenchResult run_bench(const RunConfig& c, const Communicator& world, int64_t steps, int64_t warmup, bool profile) {
  ParallelGrid grid(world, c.parallel);
  const bool lead = world.rank() == 0;
  double peak = c.train.peak_tflops > 0 ? c.train.peak_tflops : measure_gemm_tflops(c.model.precision);
  grid.all().all_reduce_max(&peak, 1);  // one figure for the job
  Trainer trainer(c, grid);
  trainer.set_peak_tflops(peak);
  const int64_t B = c.train.micro_batch, S = c.model.seq_len, V = c.model.vocab_size;
  // Random tokens; each data-parallel replica its own.
  Rng rng(c.train.seed, "bench", static_cast<uint64_t>(grid.dp().rank()));
  std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(c.train.grad_accum)), targets(tokens.size());
  for (size_t m = 0; m < tokens.size(); ++m) {
    tokens[m].resize(static_cast<size_t>(B * S));
    targets[m].resize(static_cast<size_t>(B * S));
    for (auto& t : tokens[m]) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    for (auto& t : targets[m]) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
  }
  if (lead)
    std::printf("bench: %s | %.2fM params (%.2fM active) | %d ranks, %lld x %lld x %lld tokens per replica and step | "
                "%d threads per rank | %s GEMM ceiling %.3f TFLOP/s per rank\n%s\n", c.model.pattern().c_str(),
                count_parameters(c.model) / 1e6, count_active_parameters(c.model) / 1e6, world.size(),
                (long long)c.train.grad_accum, (long long)B, (long long)S, omp_get_max_threads(),
                enum_to_string(c.model.precision).c_str(), peak,
                grid.describe().c_str());
  for (int64_t i = 0; i < warmup; ++i) trainer.step(i, tokens, targets);
  Profile& prof = trainer.model().profile();
  prof.on = profile;
  prof.reset();
  StepMetrics sum;
  for (int64_t i = 0; i < steps; ++i) {
    StepMetrics m = trainer.step(warmup + i, tokens, targets);
    sum.step_s += m.step_s;
    sum.forward_s += m.forward_s;
    sum.backward_s += m.backward_s;
    sum.optimizer_s += m.optimizer_s;
    sum.communication_s += m.communication_s;
    sum.tokens_per_s += m.tokens_per_s;
    sum.mfu += m.mfu;
    if (lead)
      std::printf("  step %lld: %.3f s (forward %.3f, backward %.3f, optimizer %.3f, in collectives %.3f), %.0f tokens/s, "
                  "MFU %.1f%%\n", (long long)(i + 1), m.step_s, m.forward_s, m.backward_s, m.optimizer_s,
                  m.communication_s, m.tokens_per_s, 100 * m.mfu);
  }
  const double n = static_cast<double>(steps);
  // Rank 0's split; the communication share and peak memory are the maxima over the ranks.
  double share = sum.communication_s / sum.step_s, rss = peak_rss_bytes();
  grid.all().all_reduce_max(&share, 1);
  grid.all().all_reduce_max(&rss, 1);
  if (lead)
    std::printf("result: %.1f tokens/s | MFU %.1f%% | step %.3f s = forward %.3f + backward %.3f + optimizer %.3f | "
                "communication %.1f%% of the step | peak memory %.2f GiB per rank\n",
                sum.tokens_per_s / n, 100 * sum.mfu / n, sum.step_s / n, sum.forward_s / n, sum.backward_s / n,
                sum.optimizer_s / n, 100 * share, rss / (1024.0 * 1024 * 1024));
  if (profile && lead) {  // rank 0's components, per step
    std::printf("profile (rank 0, seconds per step):\n  %-26s %9s %9s %7s\n", "component", "forward", "backward",
                "share");
    double total = 0;
    for (int k = 0; k < kProfileSlots; ++k) total += prof.forward[k] + prof.backward[k];
    const double step = sum.step_s / n;
    for (int k = 0; k < kProfileSlots; ++k)
      if (prof.forward[k] + prof.backward[k] > 0)
        std::printf("  %-26s %9.3f %9.3f %6.1f%%\n", profile_slot_name(k), prof.forward[k] / n, prof.backward[k] / n,
                    100 * (prof.forward[k] + prof.backward[k]) / n / step);
    std::printf("  %-26s %19.3f %6.1f%%\n", "optimizer", sum.optimizer_s / n, 100 * sum.optimizer_s / n / step);
    const double rest = step - total / n - sum.optimizer_s / n;
    std::printf("  %-26s %19.3f %6.1f%%\n", "other (pipeline, waits)", rest, 100 * rest / step);
  }
  std::fflush(stdout);
  return BenchResult{sum.tokens_per_s / n, rss, omp_get_max_threads()};
}

int cmd_bench(const RunConfigFlags& flags, int64_t steps, int64_t warmup, bool profile, const PeerOptions& peer) {
  RunConfig c = flags.resolve();
  Communicator world = Communicator::world();
  check_run_config(c, world.size());
  check_same_config_on_every_rank(c, world);
  FF_CHECK(steps >= 1 && warmup >= 0, "--bench_steps must be >= 1 and --warmup >= 0");
  if (peer.on) {  // checked first, so a wrong flag does not cost a whole measurement
    FF_CHECK(world.size() == 1, "--peer runs the PyTorch peer after a single-process measurement, but this job has %d "
             "ranks: run `fivefold bench --peer` without mpirun (or with -np 1)", world.size());
    std::error_code ec;
    FF_CHECK(std::filesystem::is_regular_file(peer.script, ec), "--peer_script %s: no such file (the PyTorch peer, "
             "bench/torch_peer.py of the source tree)", peer.script.c_str());
    FF_CHECK(executable_found(peer.python), "--peer_python %s: no such executable%s; give a Python 3 with PyTorch "
             "(Debian: /usr/bin/python3 with python3-torch)", peer.python.c_str(),
             peer.python.find('/') == std::string::npos ? " in PATH" : "");
  }
  set_threads(c);
  const BenchResult ff = run_bench(c, world, steps, warmup, profile);  // its memory is freed before the peer starts
  if (peer.on) run_peer(c, peer, steps, warmup, ff);
  return 0;
}

struct PlanOptions {
  int64_t world = 1;
  bool all = false;
  DeviceSpec device;
};

int cmd_plan(const RunConfigFlags& flags, const PlanOptions& o) {
  RunConfig c = flags.resolve();
  auto errors = c.model.validate();
  FF_CHECK(errors.empty(), "invalid model config: %s", errors.empty() ? "" : errors[0].c_str());
  FF_CHECK(o.world >= 1, "--world %lld: must be >= 1", (long long)o.world);
  PlanInput in{c.model, c.parallel, o.world, c.train.micro_batch, c.train.grad_accum, c.optim.distributed};
  std::vector<std::pair<ParallelConfig, Plan>> rows;
  if (o.all) {
    rows = plan_all_layouts(in, o.device);
    FF_CHECK(!rows.empty(), "no parallel layout of %lld ranks suits this model", (long long)o.world);
  } else {
    Plan p = plan_layout(in, o.device);
    if (!p.problems.empty()) {
      FF_FAIL("this layout cannot run:%s", join_problems(p.problems).c_str());
    }
    rows.emplace_back(c.parallel, p);
  }
  std::printf("plan: %s, %.2fM parameters, %lld ranks, %lld x %lld x %lld tokens per replica and step; device %.1f GiB, "
              "%.3f TFLOP/s at %.0f%%, links %.1f GB/s and %.0f us%s\n%s",
              c.model.pattern().c_str(), count_parameters(c.model) / 1e6, (long long)o.world,
              (long long)c.train.grad_accum, (long long)c.train.micro_batch, (long long)c.model.seq_len,
              o.device.memory_gib, o.device.gemm_tflops, 100 * o.device.efficiency, o.device.link_gbytes,
              o.device.latency_us,
              c.optim.distributed ? "; distributed optimizer" : "", plan_table(rows, o.device).c_str());
  return 0;
}

}  // namespace
}  // namespace ff

int main(int argc, char** argv) {
  using namespace ff;
  MpiSession mpi(&argc, &argv);  // outside the try: an error must abort while MPI is still up
  try {
    CLI::App app{"fivefold: train dense and MoE language models with 5-D parallelism"};
    app.require_subcommand(1);
    RunConfig defaults;
    defaults.model = model_preset(defaults.train.model_preset);

    RunConfigFlags train_flags;
    bool print_config = false;
    auto* train = app.add_subcommand("train", "train a model (default: a small MoE on the KJV corpus)");
    train_flags.add_to(*train, defaults);
    train->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");

    RunConfigFlags upcycle_flags;
    std::string upcycle_out;
    auto* upcycle = app.add_subcommand("upcycle", "turn a dense model (--init_from) into an MoE model file "
                                                  "(--upcycle_experts, --upcycle_top_k, --upcycle_granularity, ...)");
    upcycle_flags.add_to(*upcycle, defaults);
    upcycle->add_option("--out", upcycle_out, "the MoE model file to write")->required();

    // `fivefold align rm | dpo`: training on preference pairs (train/preference_data.h), the
    // recipe's fields preset (align_recipe); every train flag applies.
    auto* align = app.add_subcommand("align", "align a model on preference pairs (JSONL: prompt, chosen, rejected)");
    align->require_subcommand(1);
    RunConfigFlags rm_flags, dpo_flags;
    auto* align_rm = align->add_subcommand("rm", "train a Bradley-Terry reward model: a value head scores each "
                                                 "response's end, loss -log sigmoid(r_chosen - r_rejected)");
    rm_flags.add_to(*align_rm, defaults);
    align_rm->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
    auto* align_dpo = align->add_subcommand("dpo", "direct preference optimisation against a frozen reference "
                                                   "(--objective dpo, ipo, rpo_sq, rpo_fwd_kl or rpo_bwd_kl)");
    dpo_flags.add_to(*align_dpo, defaults);
    align_dpo->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
    RunConfigFlags spin_flags;
    auto* align_spin = align->add_subcommand("spin", "self-play fine-tuning: per iteration, pair each SFT response "
                                                     "with the current model's own answer, train with DPO against "
                                                     "the current model, promote (--spin_iterations)");
    spin_flags.add_to(*align_spin, defaults);
    align_spin->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
    // SteerLM's steps (train/steerlm.h): attribute-model, annotate, sft; generate --attributes.
    auto* steer = align->add_subcommand("steerlm", "SteerLM: attribute model, annotation, attribute-conditioned SFT "
                                                   "(then fivefold generate --attributes)");
    steer->require_subcommand(1);
    RunConfigFlags steer_attr_flags, steer_sft_flags;
    auto* steer_attr = steer->add_subcommand("attribute-model", "1. train a model predicting each attribute of "
                                                                "--steerlm_attributes (a value head per attribute, "
                                                                "squared error, labels -100 ignored)");
    steer_attr_flags.add_to(*steer_attr, defaults);
    steer_attr->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
    AnnotateOptions annotate;
    auto* steer_annotate = steer->add_subcommand("annotate", "2. add an attribute model's predictions (clipped to "
                                                             "[0, 4], rounded) to every record of a JSONL file");
    steer_annotate->add_option("--model", annotate.model_path, "the attribute model")->required();
    steer_annotate->add_option("--data_path", annotate.data_path, "JSONL records (prompt, response)")->required();
    steer_annotate->add_option("--output", annotate.output_path, "the annotated JSONL file")->required();
    steer_annotate->add_option("--chat_template", annotate.chat_template, "default: the attribute model's");
    steer_annotate->add_option("--micro_batch", annotate.micro_batch, "records per forward")->capture_default_str();
    steer_annotate->add_option("--threads", annotate.threads, "OpenMP threads per rank; 0 = automatic");
    for (const char* f : {"tp", "cp", "pp", "ep", "etp", "sequence_parallel"})
      steer_annotate->add_option_function<std::string>(std::string("--") + f,
                                                       [&annotate, n = std::string(f)](const std::string& v) {
                                                         annotate.layout[n] = v;
                                                       },
                                                       std::string("parallel layout: ") + f);
    auto* steer_sft = steer->add_subcommand("sft", "3. SFT conditioned on each record's attributes, written after "
                                                   "NeMo's assistant header as <extra_id_2>name:value,...");
    steer_sft_flags.add_to(*steer_sft, defaults);
    steer_sft->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");

    ConvertOptions conv;
    auto* convert = app.add_subcommand("convert", "Hugging Face export (--to hf) or import (--from hf)");
    convert->add_option("--to", conv.to, "hf: write a Hugging Face folder from --checkpoint");
    convert->add_option("--from", conv.from, "hf: read the Hugging Face folder --in into a model file");
    convert->add_option("--checkpoint", conv.checkpoint, "checkpoint folder, save folder (latest) or model file");
    convert->add_option("--in", conv.in, "Hugging Face model folder (config.json + safetensors)");
    convert->add_option("--out", conv.out, "export: output folder; import: output model .safetensors");
    convert->add_option("--family", conv.family, "llama | mixtral | qwen2_moe | auto")->capture_default_str();
    convert->add_flag("--merge_lora", conv.merge_lora, "export: fold the LoRA adapters into the weights");
    convert->add_option("--dtype", conv.dtype, "export dtype: f32 (exact) or bf16")->capture_default_str();
    convert->add_option("--max_shard_mb", conv.max_shard_mb, "export: shard files past this size (MiB)")
        ->capture_default_str();

    FieldFlags<PreprocessConfig> pre_flags;
    auto* pre = app.add_subcommand("preprocess", "JSONL or text -> Megatron indexed dataset (PREFIX.bin + PREFIX.idx)");
    pre_flags.add_to(*pre, "Preprocess");
    FieldFlags<SentencePieceTrainConfig> tok_flags;
    auto* tokenizer = app.add_subcommand("tokenizer", "tokenizer tools");
    auto* tok_train = tokenizer->add_subcommand("train", "train a SentencePiece model on text files");
    tok_flags.add_to(*tok_train, "Tokenizer");
    tokenizer->require_subcommand(1);

    GenerateOptions gen;
    gen.sampling.max_new_tokens = 300;
    auto* generate = app.add_subcommand("generate", "sample text from a trained model");
    generate->add_option("--model", gen.model_path, "model file, checkpoint folder or Hugging Face folder")
        ->capture_default_str();
    generate->add_option("--prompt", gen.prompt, "text to continue")->capture_default_str();
    generate->add_option("--prompts", gen.prompts_file, "JSONL file of prompts ({\"prompt\": ...} or a string per line), "
                                                        "generated as one batch");
    generate->add_option("--tokens", gen.sampling.max_new_tokens, "new tokens per prompt, at most")->capture_default_str();
    generate->add_option("--temperature", gen.sampling.temperature, "sampling temperature; 0 = greedy")
        ->capture_default_str();
    generate->add_option("--top_k", gen.sampling.top_k, "sample among the k most likely tokens; 0 = all")
        ->capture_default_str();
    generate->add_option("--top_p", gen.sampling.top_p, "nucleus sampling: the smallest set of tokens of this "
                                                        "probability; 1 = off")->capture_default_str();
    generate->add_option("--seed", gen.sampling.seed, "sampling seed")->capture_default_str();
    generate->add_option("--stop", gen.sampling.stop, "stop string (repeatable); the text ends before it");
    generate->add_option("--kv_cache", gen.sampling.kv_cache, "decode with the KV cache (false: recompute the context "
                                                              "every token)")->capture_default_str();
    generate->add_option("--chat_template", gen.chat_template, "none | chatml | llama3 | nemo: each prompt becomes "
                                                              "the user's turn, and the model writes the assistant's")
        ->capture_default_str();
    generate->add_option("--threads", gen.threads, "OpenMP threads per rank; 0 = OMP_NUM_THREADS or the cores shared "
                                                   "among the ranks")->capture_default_str();
    generate->add_option("--output", gen.output, "text | jsonl (one {prompt, text, finish, new_tokens} per prompt)")
        ->capture_default_str();
    generate->add_option("--attributes", gen.attributes, "SteerLM: the attribute string to condition on, e.g. "
                                                        "\"quality:4,toxicity:0\" (needs --chat_template nemo; "
                                                        "stops at <extra_id_1>)");
    generate->add_option("--tokenizer_type", gen.tokenizer_type, "byte | sentencepiece | bpe; default: the model's own");
    generate->add_option("--tokenizer_path", gen.tokenizer_path, "tokenizer file; default: the one the model carries");
    ParallelConfig gen_layout;
    CliRegistrar gen_reg{*generate, gen.layout, "Parallel"};
    gen_layout.visit_fields(gen_reg);

    EvalOptions ev;
    std::string ev_tokenizer_type, ev_tokenizer_path;
    std::map<std::string, std::string> ev_parallel;
    auto* eval = app.add_subcommand("eval", "loss, perplexity and bits per byte of a model on a text, JSONL or indexed "
                                            "dataset (any layout under mpirun)");
    eval->add_option("--model", ev.model, "model file, checkpoint folder or Hugging Face folder")->required();
    eval->add_option("--data", ev.data, "text or JSONL file (prepared on first use), or an indexed-dataset PREFIX")
        ->required();
    eval->add_option("--json_key", ev.json_key, "JSONL: the key holding each document's text")->capture_default_str();
    eval->add_option("--split", ev.split, "train,valid,test ratios over the documents (as train.split)")
        ->capture_default_str();
    eval->add_option("--part", ev.part, "all | train | valid | test: which documents")->capture_default_str();
    eval->add_option("--micro_batch", ev.micro_batch, "windows per micro-batch")->capture_default_str();
    eval->add_option("--seq_len", ev.seq_len, "window length; 0 = the model's seq_len")->capture_default_str();
    eval->add_option("--max_windows", ev.max_windows, "evaluate at most this many windows; 0 = all")
        ->capture_default_str();
    eval->add_option("--tokenizer_type", ev_tokenizer_type, "byte | sentencepiece | bpe; default: the model's own");
    eval->add_option("--tokenizer_path", ev_tokenizer_path, "tokenizer file; default: the one the model carries");
    ParallelConfig ev_layout;
    CliRegistrar ev_reg{*eval, ev_parallel, "Parallel"};
    ev_layout.visit_fields(ev_reg);

    RunConfigFlags bench_flags;
    int64_t bench_steps = 3, warmup = 1;
    bool bench_profile = false;
    auto* bench = app.add_subcommand("bench", "time training steps of a config on random tokens");
    bench_flags.add_to(*bench, defaults);
    bench->add_option("--bench_steps", bench_steps, "timed steps")->capture_default_str();
    bench->add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
    bench->add_flag("--profile", bench_profile, "time every component of forward and backward");
    PeerOptions peer;
    peer.script = default_peer_script();
    bench->add_flag("--peer", peer.on, "then time the PyTorch peer (bench/torch_peer.py) on the same config, steps and "
                    "threads, and print both tokens/s and their ratio (one process only)");
    bench->add_option("--peer_script", peer.script, "the PyTorch peer script")->capture_default_str();
    bench->add_option("--peer_python", peer.python, "the Python (with PyTorch) that runs the peer")
        ->capture_default_str();

    RunConfigFlags plan_flags;
    PlanOptions plan_opts;
    auto* plan = app.add_subcommand("plan", "per-rank memory and step time of a layout, or of every layout (--all)");
    plan_flags.add_to(*plan, defaults);
    plan->add_option("--world", plan_opts.world, "ranks of the job")->capture_default_str();
    plan->add_flag("--all", plan_opts.all, "rank every valid layout of --world ranks, those that fit first");
    plan->add_option("--memory_gib", plan_opts.device.memory_gib, "device memory per rank (GiB)")->capture_default_str();
    plan->add_option("--gemm_tflops", plan_opts.device.gemm_tflops, "measured GEMM rate per rank, in the model's precision (fivefold_gemm_ceiling)")->capture_default_str();
    plan->add_option("--efficiency", plan_opts.device.efficiency, "fraction of the GEMM rate a step reaches")
        ->capture_default_str();
    plan->add_option("--link_gbytes", plan_opts.device.link_gbytes, "collective bandwidth per rank (GB/s)")
        ->capture_default_str();
    plan->add_option("--latency_us", plan_opts.device.latency_us, "fixed cost of one message, microseconds")
        ->capture_default_str();

    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      // Every rank parsed the same command line: rank 0 alone prints the error (or --help).
      if (error_rank() == 0) return app.exit(e);
      return e.get_exit_code();
    }
    if (train->parsed()) return cmd_train(train_flags, print_config);
    if (align_rm->parsed()) return cmd_train(align_recipe(rm_flags, "rm"), print_config);
    if (align_dpo->parsed()) return cmd_train(align_recipe(dpo_flags, "dpo"), print_config);
    if (align_spin->parsed()) return cmd_spin(spin_flags, print_config);
    if (upcycle->parsed()) return cmd_upcycle(upcycle_flags, upcycle_out);
    if (steer_attr->parsed()) return cmd_train(steerlm_recipe(steer_attr_flags, true), print_config);
    if (steer_sft->parsed()) return cmd_train(steerlm_recipe(steer_sft_flags, false), print_config);
    if (steer_annotate->parsed()) return cmd_steerlm_annotate(annotate);
    if (generate->parsed()) return cmd_generate(gen);
    if (eval->parsed()) {
      ev.tokenizer = explicit_tokenizer(ev_tokenizer_type, ev_tokenizer_path);
      return cmd_eval(ev, ev_parallel);
    }
    if (pre->parsed()) return cmd_preprocess(pre_flags.resolve());
    if (tok_train->parsed()) {
      const auto tc = tok_flags.resolve();
      train_sentencepiece(tc);
      std::printf("wrote %s.model and %s.vocab (%lld tokens)\n", tc.model_prefix.c_str(), tc.model_prefix.c_str(),
                  (long long)tc.vocab_size);
      return 0;
    }
    if (convert->parsed()) {
      run_convert(conv);
      return 0;
    }
    if (bench->parsed()) return cmd_bench(bench_flags, bench_steps, warmup, bench_profile, peer);
    if (plan->parsed()) return cmd_plan(plan_flags, plan_opts);
  } catch (const UserError& e) {
    abort_job_once(e.what());
  } catch (const std::bad_alloc&) {
    abort_job_once("out of memory: this run needs more memory than this machine gave it; `fivefold plan` shows what a "
              "config needs per rank: make the model, train.micro_batch or model.seq_len smaller, or use more ranks");
  } catch (const std::exception& e) {
    // Most errors that reach here are alike on every rank (a missing file, a bad split): printed
    // once; one that only some ranks meet is still printed, by them, a moment later.
    abort_job_once(e.what());
  }
  return 0;
}
