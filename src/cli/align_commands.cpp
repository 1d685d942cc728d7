#include "cli/align_commands.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/jsonl.h"
#include "io/progress.h"
#include "recipes/ppo/ppo.h"
#include "recipes/spin.h"
#include "train/model_source.h"
#include "train/sft_data.h"
#include "train/steerlm.h"
#include "train/trainer.h"
#include "train/upcycle.h"

namespace ff {

namespace {

int train_run(const RunConfigFlags& flags, bool print_config) {
  return run_job(flags, print_config, [](RunConfig& c, const ParallelGrid& grid) { Trainer(c, grid).run(); });
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
  const bool shown = stderr_is_terminal();
  {
    Progress built("upcycle", static_cast<int64_t>(model.params().params().size()), ProgressUnit::count, "tensors",
                   printing(shown));
    load_model_source(src, model, {}, [&](const TensorFetch& f, const std::string& n, HostTensor& t) {
      built.advance(1);
      return upcycled_tensor(src.config.model, o, f, n, t);
    });
  }
  c.train.init_from = "";
  const TokenizerFile tok = model_tokenizer(src, std::nullopt);
  save_model(model, c, out_path, &tok, shown);
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

// `fivefold align steerlm annotate`: a SteerLM attribute model's predictions (clipped to [0, 4],
// rounded) added to every record of a JSONL file as "attributes": {name: value}.

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

}  // namespace

void add_align_commands(CLI::App& app, RunConfig& defaults, bool& print_config, AlignCommands& cmds) {
  auto& upcycle_flags = cmds.upcycle_flags;
  auto& upcycle_out = cmds.upcycle_out;
  auto& rm_flags = cmds.rm_flags;
  auto& dpo_flags = cmds.dpo_flags;
  auto& spin_flags = cmds.spin_flags;
  auto& steer_attr_flags = cmds.steer_attr_flags;
  auto& steer_sft_flags = cmds.steer_sft_flags;
  auto& annotate = cmds.annotate;
  auto* upcycle = cmds.upcycle = app.add_subcommand("upcycle", "turn a dense model (--init_from) into an MoE model file "
                                                "(--upcycle_experts, --upcycle_top_k, --upcycle_granularity, ...)");
  upcycle_flags.add_to(*upcycle, defaults);
  upcycle->add_option("--out", upcycle_out, "the MoE model file to write")->required();

  // `fivefold align rm | dpo`: training on preference pairs (train/preference_data.h), the
  // recipe's fields preset (align_recipe); every train flag applies.
  auto* align = app.add_subcommand("align", "align a model on preference pairs (JSONL: prompt, chosen, rejected)");
  align->require_subcommand(1);
  auto* align_rm = cmds.align_rm = align->add_subcommand("rm", "train a Bradley-Terry reward model: a value head scores each "
                                               "response's end, loss -log sigmoid(r_chosen - r_rejected)");
  rm_flags.add_to(*align_rm, defaults);
  align_rm->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
  auto* align_dpo = cmds.align_dpo = align->add_subcommand("dpo", "direct preference optimisation against a frozen reference "
                                                 "(--objective dpo, ipo, rpo_sq, rpo_fwd_kl or rpo_bwd_kl)");
  dpo_flags.add_to(*align_dpo, defaults);
  align_dpo->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
  auto* align_spin = cmds.align_spin = align->add_subcommand("spin", "self-play fine-tuning: per iteration, pair each SFT response "
                                                   "with the current model's own answer, train with DPO against "
                                                   "the current model, promote (--spin_iterations)");
  spin_flags.add_to(*align_spin, defaults);
  align_spin->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
  auto* align_ppo = cmds.align_ppo = align->add_subcommand("ppo", "RLHF with PPO: the actor (--init_from, an SFT model) "
                                                 "rolls out prompts (JSONL --data_path), the --reward_model scores them, a "
                                                 "critic and the actor train on the clipped losses against a frozen "
                                                 "reference; --steps iterations");
  cmds.ppo_flags.add_to(*align_ppo, defaults);
  align_ppo->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
  // SteerLM's steps (train/steerlm.h): attribute-model, annotate, sft; generate --attributes.
  auto* steer = align->add_subcommand("steerlm", "SteerLM: attribute model, annotation, attribute-conditioned SFT "
                                                 "(then fivefold generate --attributes)");
  steer->require_subcommand(1);
  auto* steer_attr = cmds.steer_attr = steer->add_subcommand("attribute-model", "1. train a model predicting each attribute of "
                                                              "--steerlm_attributes (a value head per attribute, "
                                                              "squared error, labels -100 ignored)");
  steer_attr_flags.add_to(*steer_attr, defaults);
  steer_attr->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
  auto* steer_annotate = cmds.steer_annotate = steer->add_subcommand("annotate", "2. add an attribute model's predictions (clipped to "
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
                                                     std::string("parallel layout: parallel.") + f)
        ->type_name(std::string(f) == "sequence_parallel" ? "BOOL" : "INT");
  auto* steer_sft = cmds.steer_sft = steer->add_subcommand("sft", "3. SFT conditioned on each record's attributes, written after "
                                                 "NeMo's assistant header as <extra_id_2>name:value,...");
  steer_sft_flags.add_to(*steer_sft, defaults);
  steer_sft->add_flag("--print_config", print_config, "print the resolved config as JSON and exit");
}

int run_align_command(const AlignCommands& cmds, bool print_config) {
  if (cmds.align_rm->parsed()) return train_run(align_recipe(cmds.rm_flags, "rm"), print_config);
  if (cmds.align_dpo->parsed()) return train_run(align_recipe(cmds.dpo_flags, "dpo"), print_config);
  if (cmds.align_spin->parsed()) return cmd_spin(cmds.spin_flags, print_config);
  if (cmds.align_ppo->parsed())
    return run_world_job(cmds.ppo_flags, print_config, [](RunConfig& c, const Communicator& world) { run_ppo(c, world); });
  if (cmds.upcycle->parsed()) return cmd_upcycle(cmds.upcycle_flags, cmds.upcycle_out);
  if (cmds.steer_attr->parsed()) return train_run(steerlm_recipe(cmds.steer_attr_flags, true), print_config);
  if (cmds.steer_sft->parsed()) return train_run(steerlm_recipe(cmds.steer_sft_flags, false), print_config);
  if (cmds.steer_annotate->parsed()) return cmd_steerlm_annotate(cmds.annotate);
  return -1;
}

}  // namespace ff
