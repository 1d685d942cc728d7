#include "train/config.h"

#include "io/config_json.h"
#include "models/decoder_lm.h"

namespace ff {

namespace {
constexpr EnumName<Objective> kObjectives[] = {
    {Objective::cross_entropy, "cross_entropy"}, {Objective::bradley_terry, "bradley_terry"},
    {Objective::dpo, "dpo"}, {Objective::ipo, "ipo"}, {Objective::rpo_sq, "rpo_sq"},
    {Objective::rpo_fwd_kl, "rpo_fwd_kl"}, {Objective::rpo_bwd_kl, "rpo_bwd_kl"},
    {Objective::attribute_regression, "attribute_regression"}};
}  // namespace

std::span<const EnumName<Objective>> enum_names(Objective) { return kObjectives; }

std::vector<std::string> TrainConfig::validate() const {
  std::vector<std::string> e;
  if (steps < 0) e.push_back(strprintf("train.steps = %lld: must be >= 0", (long long)steps));
  if (micro_batch < 1) e.push_back(strprintf("train.micro_batch = %lld: must be >= 1", (long long)micro_batch));
  if (grad_accum < 1) e.push_back(strprintf("train.grad_accum = %lld: must be >= 1", (long long)grad_accum));
  if (eval_interval < 0) e.push_back(strprintf("train.eval_interval = %lld: must be >= 0", (long long)eval_interval));
  if (eval_samples < 1) e.push_back(strprintf("train.eval_samples = %lld: must be >= 1", (long long)eval_samples));
  if (log_interval < 1) e.push_back(strprintf("train.log_interval = %lld: must be >= 1", (long long)log_interval));
  if (peak_tflops < 0) e.push_back(strprintf("train.peak_tflops = %g: must be >= 0", peak_tflops));
  if (threads < 0) e.push_back(strprintf("train.threads = %lld: must be >= 0", (long long)threads));
  if (data_path.empty()) e.push_back("train.data_path is empty: give a text file or an indexed-dataset prefix");
  if (tokenizer_type != TokenizerType::byte && tokenizer_path.empty())
    e.push_back("train.tokenizer_path is empty: give the tokenizer file, or --tokenizer_type byte");
  if (save_interval < 0) e.push_back(strprintf("train.save_interval = %lld: must be >= 0 (0 = none)", (long long)save_interval));
  const bool pairwise = objective != Objective::cross_entropy && objective != Objective::attribute_regression;
  if ((objective == Objective::attribute_regression) != (data_format == DataFormat::attributes))
    e.push_back(strprintf("train.objective = %s with train.data_format = %s: a SteerLM attribute model "
                          "(attribute_regression) trains on attribute data and only it does",
                          enum_to_string(objective).c_str(), enum_to_string(data_format).c_str()));
  if (data_format == DataFormat::attributes && steerlm_attributes.empty())
    e.push_back("train.data_format = attributes needs train.steerlm_attributes: the attributes to predict");
  if (pairwise != (data_format == DataFormat::preference))
    e.push_back(strprintf("train.objective = %s with train.data_format = %s: preference pairs go with a pairwise "
                          "objective (bradley_terry, dpo, ipo, rpo_*) and those objectives with preference data",
                          enum_to_string(objective).c_str(), enum_to_string(data_format).c_str()));
  if (pairwise && micro_batch % 2 != 0)
    e.push_back(strprintf("train.micro_batch = %lld: preference pairs take two sequences each (chosen, rejected), so "
                          "the micro-batch must be even", (long long)micro_batch));
  if (pairwise && !teacher.empty()) e.push_back("train.teacher: distillation does not combine with a pairwise objective");
  if (kd_hidden_cosine && teacher.empty())
    e.push_back("train.kd_hidden_cosine: a cosine loss against the teacher's hidden states; it needs train.teacher");
  if (kd_lm_loss && teacher.empty()) e.push_back("train.kd_lm_loss: keeps the LM loss beside distillation; it needs train.teacher");
  if (!(kd_temperature > 0)) e.push_back(strprintf("train.kd_temperature = %g: must be > 0", kd_temperature));
  if (!(dpo_beta > 0)) e.push_back(strprintf("train.dpo_beta = %g: must be > 0", dpo_beta));
  if (spin_iterations < 1) e.push_back(strprintf("train.spin_iterations = %lld: must be >= 1", (long long)spin_iterations));
  if (spin_max_new_tokens < 1)
    e.push_back(strprintf("train.spin_max_new_tokens = %lld: must be >= 1", (long long)spin_max_new_tokens));
  if (spin_temperature < 0) e.push_back(strprintf("train.spin_temperature = %g: must be >= 0", spin_temperature));
  if (ppo_rollout_prompts < 1 || ppo_max_new_tokens < 1)
    e.push_back(strprintf("train.ppo_rollout_prompts = %lld and train.ppo_max_new_tokens = %lld: both must be >= 1",
                          (long long)ppo_rollout_prompts, (long long)ppo_max_new_tokens));
  if (!(ppo_temperature > 0) || ppo_top_k < 0 || !(ppo_top_p > 0 && ppo_top_p <= 1))
    e.push_back("train.ppo_temperature > 0, train.ppo_top_k >= 0 and train.ppo_top_p in (0, 1] are required (PPO "
                "learns from its own sampling distribution, so it never samples greedily)");
  if (!(ppo_clip > 0 && ppo_clip < 1) || !(ppo_value_clip > 0))
    e.push_back(strprintf("train.ppo_clip = %g must be in (0, 1) and train.ppo_value_clip = %g > 0", ppo_clip,
                          ppo_value_clip));
  if (ppo_kl_beta < 0 || ppo_gamma < 0 || ppo_gamma > 1 || ppo_lambda < 0 || ppo_lambda > 1 || ppo_critic_warmup < 0 ||
      ppo_entropy_coeff < 0)
    e.push_back("train.ppo_kl_beta >= 0, train.ppo_gamma and ppo_lambda in [0, 1], train.ppo_critic_warmup >= 0 and "
                "train.ppo_entropy_coeff >= 0 are required");
  if (ppo_critic_ranks < 0 || ppo_critic_tp < 1 || ppo_critic_pp < 1)
    e.push_back(strprintf("train.ppo_critic_ranks = %lld must be >= 0 (0 = shared ranks), train.ppo_critic_tp = %lld "
                          "and ppo_critic_pp = %lld >= 1", (long long)ppo_critic_ranks, (long long)ppo_critic_tp,
                          (long long)ppo_critic_pp));
  if (dpo_sft_weight < 0) e.push_back(strprintf("train.dpo_sft_weight = %g: must be >= 0", dpo_sft_weight));
  if (keep_checkpoints < 0)
    e.push_back(strprintf("train.keep_checkpoints = %lld: must be >= 0 (0 = all)", (long long)keep_checkpoints));
  return e;
}

std::vector<std::string> RunConfig::validate(int64_t world) const {
  auto e = model.validate();
  auto add = [&](std::vector<std::string> more) { e.insert(e.end(), more.begin(), more.end()); };
  add(optim.validate());
  add(train.validate());
  auto layout = parallel.validate(train.ppo_critic_ranks > 0 ? std::max<int64_t>(actor_world(world), 1) : world);
  if (train.ppo_critic_ranks > 0) {  // PPO's split placement: the actor's ranks, then the critic's
    for (std::string& p : layout)
      p = strprintf("the actor's ranks (%lld of the job's %lld; the last train.ppo_critic_ranks = %lld are the "
                    "critic's): ", (long long)actor_world(world), (long long)world, (long long)train.ppo_critic_ranks) + p;
    if (train.ppo_critic_ranks >= world)
      layout.push_back(strprintf("train.ppo_critic_ranks = %lld of a job of %lld ranks leaves none for the actor: "
                                 "start more ranks or give the critic fewer", (long long)train.ppo_critic_ranks,
                                 (long long)world));
    for (const std::string& p : ppo_critic_layout().validate(train.ppo_critic_ranks))
      layout.push_back("the critic's ranks (train.ppo_critic_ranks, ppo_critic_tp, ppo_critic_pp): " + p);
  }
  add(layout);
  if (layout.empty() && e.empty()) add(layout_problems(model, parallel));  // sizes vs. this layout
  if (train.objective == Objective::attribute_regression && !train.steerlm_attributes.empty()) {
    int64_t n = 1;
    for (char ch : train.steerlm_attributes) n += ch == ',';
    if (model.value_outputs != n)
      e.push_back(strprintf("model.value_outputs = %lld: a SteerLM attribute model has one output per attribute of "
                            "train.steerlm_attributes (%lld)", (long long)model.value_outputs, (long long)n));
  }
  const bool reward_model = train.objective == Objective::bradley_terry ||
                            train.objective == Objective::attribute_regression;
  if (train.objective != Objective::cross_entropy && reward_model != (model.head == HeadKind::value))
    e.push_back(strprintf("train.objective = %s with model.head = %s: the reward model (bradley_terry) needs the "
                          "value head, the DPO family the LM head", enum_to_string(train.objective).c_str(),
                          enum_to_string(model.head).c_str()));
  return e;
}

ParallelConfig RunConfig::ppo_critic_layout() const {
  ParallelConfig c;
  c.tp = train.ppo_critic_tp;
  c.pp = train.ppo_critic_pp;
  c.sequence_parallel = parallel.sequence_parallel && c.tp > 1;
  c.moe_dispatcher = parallel.moe_dispatcher;
  c.trace_collectives = parallel.trace_collectives.empty() ? "" : parallel.trace_collectives + ".critic";
  return c;
}

void check_same_config_on_every_rank(RunConfig& c, const Communicator& world) {
  if (world.size() == 1) return;
  const std::string mine = run_config_to_json(c);
  int64_t n = world.rank() == 0 ? static_cast<int64_t>(mine.size()) : 0;
  world.broadcast(&n, sizeof(n), 0);
  std::string first(static_cast<size_t>(n), '\0');
  if (world.rank() == 0) first = mine;
  world.broadcast(first.data(), n, 0);
  std::string where;  // the first field that differs from rank 0's, if any
  if (first != mine) {
    const auto a = nlohmann::json::parse(mine), b = nlohmann::json::parse(first);
    for (auto sec = a.begin(); sec != a.end() && where.empty(); ++sec)
      for (auto f = sec->begin(); f != sec->end() && where.empty(); ++f) {
        const bool there = b.contains(sec.key()) && b[sec.key()].contains(f.key());
        if (!there || b[sec.key()][f.key()] != *f)
          where = strprintf("%s.%s = %s, rank 0 has %s", sec.key().c_str(), f.key().c_str(), f->dump().c_str(),
                            there ? b[sec.key()][f.key()].dump().c_str() : "no such field");
      }
    if (where.empty()) where = "the config text";
  }
  // Which ranks differ (all of them learn it), then the first of them tells the others where.
  std::vector<int64_t> flags(static_cast<size_t>(world.size()));
  const int64_t mine_differs = where.empty() ? 0 : 1;
  world.all_gather(flags.data(), &mine_differs, 1);
  int first_rank = -1;
  for (int r = 0; r < world.size() && first_rank < 0; ++r)
    if (flags[static_cast<size_t>(r)]) first_rank = r;
  if (first_rank < 0) return;
  int64_t len = static_cast<int64_t>(where.size());
  world.broadcast(&len, sizeof(len), first_rank);
  where.resize(static_cast<size_t>(len));
  world.broadcast(where.data(), len, first_rank);
  FF_FAIL("rank %d of this job resolved another config than rank 0: %s; start every rank with the same flags and "
          "files", first_rank, where.c_str());
}

RunConfig run_config_from_json(const std::string& text, const std::string& source_name) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& ex) {
    FF_FAIL("%s: not valid JSON: %s", source_name.c_str(), ex.what());
  }
  FF_CHECK(j.is_object(), "%s: the config must be a JSON object with sections model, optim, train, parallel",
           source_name.c_str());
  RunConfig c;
  std::vector<std::string> errors;
  if (j.contains("train")) config_from_json(c.train, j["train"], "train", errors);
  if (!c.train.model_preset.empty()) {
    try {
      c.model = model_preset(c.train.model_preset);
    } catch (const Error& ex) {
      errors.push_back(std::string("train.model_preset: ") + ex.what());
    }
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k == "model") config_from_json(c.model, *it, "model", errors);
    else if (k == "optim") config_from_json(c.optim, *it, "optim", errors);
    else if (k == "parallel") config_from_json(c.parallel, *it, "parallel", errors);
    else if (k != "train") errors.push_back(k + ": unknown section; use model, optim, train or parallel");
  }
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("%s: %zu problem(s):%s", source_name.c_str(), errors.size(), all.c_str());
  }
  return c;
}

std::string run_config_to_json(RunConfig& c) {
  nlohmann::json j;
  j["model"] = config_to_json(c.model);
  j["optim"] = config_to_json(c.optim);
  j["train"] = config_to_json(c.train);
  j["parallel"] = config_to_json(c.parallel);
  return j.dump(2);
}

}  // namespace ff
