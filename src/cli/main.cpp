// fivefold: one binary and its subcommands (train, generate, eval, convert, preprocess, tokenizer,
// bench, plan; upcycle and align in cli/align_commands.h).
#include <fcntl.h>
#include <omp.h>
#include <spawn.h>
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
#include "cli/align_commands.h"
#include "cli/cli_config.h"
#include "cli/prune_command.h"
#include "cli/search_command.h"
#include "cli/version.h"
#include "cli/config_reference.h"
#include "cli/report_command.h"
#include "recipes/ppo/ppo_plan.h"
#include "io/config_json.h"
#include "io/preprocess.h"
#include "io/progress.h"
#include "io/tokenizer.h"
#include "train/convert.h"
#include "train/evaluate.h"
#include "train/flops.h"
#include "train/generation.h"
#include "train/model_source.h"
#include "train/plan.h"
#include "train/sft_data.h"
#include "train/steerlm.h"
#include "train/run_record.h"
#include "train/trainer.h"

extern char** environ;

namespace ff {

namespace {

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
  EvalOptions shown = o;
  shown.progress = stderr_is_terminal();
  const EvalResult r = run_eval(shown, grid);
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
  const std::vector<Generated> out = generate(model, grid, *tok, ids, sampling, &stats, stderr_is_terminal());
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

// Times `steps` training steps of `c` after `warmup` untimed ones and prints them. Everything it
// allocates (model, optimizer, activations) is freed when it returns.
BenchResult run_bench(const RunConfig& c, const Communicator& world, int64_t steps, int64_t warmup, bool profile) {
  ParallelGrid grid(world, c.parallel);
  const bool lead = world.rank() == 0;
  MfuBasis basis = mfu_basis(c.model.precision, c.train.peak_tflops);
  double rates[2] = {basis.peak_tflops, basis.gemm_ceiling_tflops};
  grid.all().all_reduce_max(rates, 2);  // one figure for the job
  basis.peak_tflops = rates[0];
  basis.gemm_ceiling_tflops = rates[1];
  Trainer trainer(c, grid);
  trainer.set_mfu_basis(basis);
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
                "%d threads per rank | per rank: %s\n%s\n", c.model.pattern().c_str(),
                count_parameters(c.model) / 1e6, count_active_parameters(c.model) / 1e6, world.size(),
                (long long)c.train.grad_accum, (long long)B, (long long)S, omp_get_max_threads(),
                basis.describe(c.model.precision).c_str(), grid.describe().c_str());
  for (int64_t i = 0; i < warmup; ++i) trainer.step(i, tokens, targets);
  Profile& prof = trainer.model().profile();
  prof.on = profile;
  prof.reset();
  std::vector<StepMetrics> timed;
  for (int64_t i = 0; i < steps; ++i) {
    StepMetrics m = trainer.step(warmup + i, tokens, targets);
    timed.push_back(m);
    if (lead)
      std::printf("  step %lld: %.3f s (forward %.3f, backward %.3f, optimizer %.3f, in collectives %.3f), %.0f tokens/s, "
                  "MFU %.1f%%\n", (long long)(i + 1), m.step_s, m.forward_s, m.backward_s, m.optimizer_s,
                  m.communication_s, m.tokens_per_s, 100 * m.mfu);
  }
  // Medians over the timed steps (a slow first step or a noisy neighbour does not move them).
  auto median = [&](double StepMetrics::*field) {
    std::vector<double> v;
    for (const StepMetrics& m : timed) v.push_back(m.*field);
    std::sort(v.begin(), v.end());
    const size_t h = v.size() / 2;
    return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
  };
  StepMetrics med;
  for (double StepMetrics::*f : {&StepMetrics::step_s, &StepMetrics::forward_s, &StepMetrics::backward_s,
                                 &StepMetrics::optimizer_s, &StepMetrics::communication_s, &StepMetrics::mfu})
    med.*f = median(f);
  med.tokens_per_s = static_cast<double>(grid.dp_size() * c.train.grad_accum * B * S) / med.step_s;
  // Rank 0's split; the communication share and peak memory are the maxima over the ranks.
  double share = med.communication_s / med.step_s, rss = resident_peak_bytes();
  grid.all().all_reduce_max(&share, 1);
  grid.all().all_reduce_max(&rss, 1);
  const std::string of_ceiling =
      basis.gemm_ceiling_tflops > 0
          ? strprintf(" | %.1f%% of the GEMM ceiling", 100 * med.mfu * basis.peak_tflops / basis.gemm_ceiling_tflops)
          : std::string();
  if (lead)
    std::printf("result: %.1f tokens/s | MFU %.1f%% | step %.3f s = forward %.3f + backward %.3f + optimizer %.3f "
                "(medians of %lld steps) | communication %.1f%% of the step | peak memory %.2f GiB per rank%s\n",
                med.tokens_per_s, 100 * med.mfu, med.step_s, med.forward_s, med.backward_s, med.optimizer_s,
                (long long)steps, 100 * share, rss / (1024.0 * 1024 * 1024), of_ceiling.c_str());
  if (profile && lead) {  // rank 0's components, per step
    std::printf("profile (rank 0, seconds per step):\n  %-26s %9s %9s %7s\n", "component", "forward", "backward",
                "share");
    double total = 0;
    for (int k = 0; k < kProfileSlots; ++k) total += prof.forward[k] + prof.backward[k];
    const double n = static_cast<double>(steps), step = med.step_s;
    for (int k = 0; k < kProfileSlots; ++k)
      if (prof.forward[k] + prof.backward[k] > 0)
        std::printf("  %-26s %9.3f %9.3f %6.1f%%\n", profile_slot_name(k), prof.forward[k] / n, prof.backward[k] / n,
                    100 * (prof.forward[k] + prof.backward[k]) / n / step);
    std::printf("  %-26s %19.3f %6.1f%%\n", "optimizer", med.optimizer_s, 100 * med.optimizer_s / step);
    const double rest = step - total / n - med.optimizer_s;
    std::printf("  %-26s %19.3f %6.1f%%\n", "other (pipeline, waits)", rest, 100 * rest / step);
  }
  std::fflush(stdout);
  return BenchResult{med.tokens_per_s, rss, omp_get_max_threads()};
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
  if (!c.train.reward_model.empty() && !o.all) std::printf("%s", ppo_plan_table(c, o.world, o.device).c_str());
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
    app.set_version_flag("--version", [] { return version_text(); }, "print the version and the build's libraries, then exit");
    RunConfig defaults;
    defaults.model = model_preset(defaults.train.model_preset);

    RunConfigFlags train_flags;
    bool print_config = false;
    auto* train = app.add_subcommand("train", "train a model (default: a small MoE on the KJV corpus)");
    train_flags.add_to(*train, defaults);
    train->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
    AlignCommands recipes;  // upcycle, align rm | dpo | spin | steerlm
    add_align_commands(app, defaults, print_config, recipes);


    ConvertOptions conv;
    auto* convert = app.add_subcommand("convert", "Hugging Face export (--to hf) or import (--from hf)");
    convert->add_option("--to", conv.to, "hf: write a Hugging Face folder from --checkpoint");
    convert->add_option("--from", conv.from, "hf: read the Hugging Face folder --in into a model file");
    convert->add_option("--checkpoint", conv.checkpoint, "checkpoint folder, save folder (latest) or model file");
    convert->add_option("--in", conv.in, "Hugging Face model folder (config.json + safetensors)");
    convert->add_option("--out", conv.out, "export: output folder; import: output model .safetensors");
    convert->add_option("--family", conv.family, "llama | mixtral | qwen2_moe | nemotron_h | auto (any Mamba2 layer: nemotron_h)")->capture_default_str();
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

    auto* reference = app.add_subcommand("config-reference", "print every run config field (flag, type, default, "
                                                             "meaning) as Markdown: docs/config.md");
    PruneCommand prune;
    add_prune_command(app, prune);
    SearchCommand search;
    add_search_command(app, defaults, search);
    ReportOptions report;
    add_report_command(app, report);

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
    if (const int rc = run_align_command(recipes, print_config); rc >= 0) return rc;
    if (generate->parsed()) return cmd_generate(gen);
    if (eval->parsed()) {
      ev.tokenizer = explicit_tokenizer(ev_tokenizer_type, ev_tokenizer_path);
      return cmd_eval(ev, ev_parallel);
    }
    if (reference->parsed()) {
      std::printf("%s", config_reference(defaults).c_str());
      return 0;
    }
    if (prune.app->parsed()) return run_prune_command(prune);
    if (search.app->parsed()) return run_search_command(search);
    if (report.app->parsed()) return run_report_command(report);
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
