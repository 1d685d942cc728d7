// RunConfig: everything a training run is made of, as four plain sections with one field list
// each. JSON: {"model": {...}, "optim": {...}, "train": {...}, "parallel": {...}}; each field is
// also a command-line flag --name (names are unique across sections).
#pragma once
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "models/config.h"
#include "optim/optimizer.h"
#include "parallel/grid.h"

namespace ff {

// What train.data_path holds: pre-training text (windows of a token stream), SFT examples
// (train/sft_data.h) or preference pairs (train/preference_data.h), rendered by a chat template.
// (train/steerlm.h: SFT records with attribute values, for a SteerLM attribute model).
enum class DataFormat : uint8_t { pretrain, sft, preference, attributes };
std::span<const EnumName<DataFormat>> enum_names(DataFormat);
enum class ChatTemplate : uint8_t { none, chatml, llama3, nemo };
std::span<const EnumName<ChatTemplate>> enum_names(ChatTemplate);
// What a run minimises (train/objective.h, train/preference_objective.h): the cross-entropy of the
// targets (pre-training, SFT; with train.teacher, distillation), or a pairwise objective on
// preference pairs: the Bradley-Terry reward-model loss (model.head = value), DPO, IPO, or RPO
// against ground-truth rewards (squared, forward or backward KL).
// attribute_regression: SteerLM's attribute model (train/steerlm.h), a squared error per attribute.
enum class Objective : uint8_t { cross_entropy, bradley_terry, dpo, ipo, rpo_sq, rpo_fwd_kl, rpo_bwd_kl,
                                 attribute_regression };
std::span<const EnumName<Objective>> enum_names(Objective);

struct TrainConfig {
  uint64_t seed = 1234;
  int64_t steps = 500;
  int64_t micro_batch = 8;      // sequences per micro-batch
  int64_t grad_accum = 1;       // micro-batches per optimizer step
  // Data (train/data.h): a text/JSONL file, an indexed-dataset prefix, or a blend "W1 P1 W2 P2".
  std::string data_path = "data/kjv.txt";
  std::string split = "98,2,0";  // train, valid, test ratios over each source's documents
  std::string json_key = "text";
  DataFormat data_format = DataFormat::pretrain;
  ChatTemplate chat_template = ChatTemplate::none;
  std::string sft_prompt_key = "prompt", sft_response_key = "response", sft_messages_key = "messages";
  bool sft_pack = false;
  TokenizerType tokenizer_type = TokenizerType::sentencepiece;
  std::string tokenizer_path = "data/kjv-sp4096.model";
  int64_t eval_interval = 50;   // steps between validation passes; 0 = only at the end
  int64_t eval_samples = 64;  // validation samples, the same set whatever the micro-batch or layout
  int64_t log_interval = 1;
  std::string out_dir = "runs/default";
  double peak_tflops = 0;       // MFU denominator; 0 = measure this machine's physical peak
  int64_t threads = 0;          // OpenMP threads per rank; 0 = automatic (see the help text)
  std::string model_preset = "moe-tiny";  // start from a named preset, then apply the "model" fields
  int64_t save_interval = 0;    // steps between checkpoints (out_dir/checkpoints); 0 = none
  int64_t keep_checkpoints = 3; // newest checkpoints kept; 0 = all
  std::string resume;           // checkpoint folder, or a save folder with `latest`, to continue from
  std::string freeze;           // comma-separated globs of parameter names to freeze
  std::string init_from;        // pretrained weights: model file, checkpoint or Hugging Face folder
  std::string init_new;         // comma-separated globs of parameters init_from may lack
  std::string teacher;          // distillation: the frozen teacher model (file, checkpoint or HF folder)
  double kd_temperature = 1.0;
  bool kd_lm_loss = false;      // distillation: keep the cross-entropy, the KD term rescaled to its magnitude
  bool kd_hidden_cosine = false;  // distillation: + the cosine loss of the final norm's outputs
  bool memory_check = true;     // refuse to start when the planned memory exceeds what is available
  std::string tensorboard_dir;  // also write the metrics as TensorBoard scalars here (empty: no)
  // Preference pairs and their objectives (train/preference_data.h, train/preference_objective.h).
  Objective objective = Objective::cross_entropy;
  std::string pref_chosen_key = "chosen", pref_rejected_key = "rejected";
  std::string pref_chosen_reward_key = "chosen_reward", pref_rejected_reward_key = "rejected_reward";
  double dpo_beta = 0.2;              // beta of DPO, IPO and RPO
  bool dpo_average_log_probs = false; // the mean of a response's log-probs instead of their sum
  double dpo_sft_weight = 0;          // weight of the chosen responses' cross-entropy added to the loss
  double rpo_eta = 1.0;               // RPO: scale of the ground-truth reward difference
  std::string reference;              // DPO family: the frozen reference model (empty: see the help text)
  // SteerLM (train/steerlm.h): the attributes, in the order of the attribute model's outputs.
  std::string steerlm_attributes;
  // Upcycling (train/upcycle.h): with init_from a dense model and upcycle_experts > 0, the model
  // trained is its MoE upcycle, built while loading (each rank only its own experts).
  int64_t upcycle_experts = 0, upcycle_top_k = 2, upcycle_granularity = 1;
  bool upcycle_softmax_then_topk = true, upcycle_virtual_groups = true, upcycle_scale = true;
  bool upcycle_scale_down_only = false;
  std::string upcycle_layers = "all";
  double upcycle_router_std = 0.02;
  // SPIN (recipes/spin.h): iterations, and how the current model answers the SFT prompts.
  int64_t spin_iterations = 3;
  int64_t spin_max_new_tokens = 64;
  double spin_temperature = 1.0;
  int64_t spin_top_k = 0;
  double spin_top_p = 1.0;
  // PPO (recipes/ppo/ppo.h): the other models, the rollouts, the reward shaping and the clips.
  std::string reward_model, critic_init;
  int64_t ppo_rollout_prompts = 64;
  int64_t ppo_max_new_tokens = 32;
  double ppo_temperature = 1.0;
  int64_t ppo_top_k = 0;
  double ppo_top_p = 1.0;
  double ppo_kl_beta = 0.01;
  bool ppo_absolute_kl = true;
  double ppo_gamma = 1.0, ppo_lambda = 0.95;
  double ppo_clip = 0.2, ppo_value_clip = 0.2;
  double ppo_critic_lr = 9e-6;
  int64_t ppo_critic_warmup = 0;
  bool ppo_only_ended = true;
  double ppo_entropy_coeff = 0;
  int64_t ppo_critic_ranks = 0;  // placement: 0 = every model on every rank
  int64_t ppo_critic_tp = 1, ppo_critic_pp = 1;

  template <class V>
  void visit_fields(V& v) {
    v(seed, "seed", "seed of every random stream (init, data order)");
    v(steps, "steps", "optimizer steps");
    v(micro_batch, "micro_batch", "sequences per micro-batch");
    v(grad_accum, "grad_accum", "micro-batches accumulated per optimizer step");
    v(data_path, "data_path", "a text/JSONL file (tokenised on first use into PATH-TOKENIZER.{bin,idx} beside it), "
                              "an indexed dataset PREFIX (PREFIX.bin + PREFIX.idx), or a blend \"W1 PATH1 W2 PATH2 ...\"");
    v(split, "split", "train,valid,test ratios over each source's documents, e.g. 98,2,0");
    v(json_key, "json_key", "JSONL sources: the key holding each document's text");
    v(data_format, "data_format", "pretrain: documents as one token stream; sft: JSONL examples (prompt/response or "
                                  "messages), loss on the responses only");
    v(chat_template, "chat_template", "sft: how examples are rendered (none: prompt then response)");
    v(sft_prompt_key, "sft_prompt_key", "sft: the key of the prompt");
    v(sft_response_key, "sft_response_key", "sft: the key of the response");
    v(sft_pack, "sft_pack", "sft: pack several examples into each sequence (each attends to itself, positions restart)");
    v(sft_messages_key, "sft_messages_key", "sft: the key of a list of {role, content} messages (needs a chat template)");
    v(tokenizer_type, "tokenizer_type", "tokenizer kind");
    v(tokenizer_path, "tokenizer_path", "SentencePiece .model (trained on the text sources if missing) or tokenizer.json");
    v(eval_interval, "eval_interval", "steps between validation passes; 0 = only at the end");
    v(eval_samples, "eval_samples", "validation samples per validation pass: the first ones of the valid split in its "
      "shuffled order (all of a smaller split, each window once), the same set whatever train.seed, "
      "train.micro_batch or the layout");
    v(log_interval, "log_interval", "steps between log lines");
    v(tensorboard_dir, "tensorboard_dir", "also write every metric as TensorBoard scalars into this folder (rank 0; "
                                          "flushed at each log interval, readable while the run goes on)");
    v(out_dir, "out_dir", "folder for metrics.jsonl and the final model");
    v(memory_check, "memory_check", "refuse to start when the planned memory per rank (fivefold plan) exceeds the "
      "memory this machine has available for each of its ranks");
    v(peak_tflops, "peak_tflops", "peak TFLOP/s per rank for MFU; 0 = measure the physical peak at start (multiply-add chains "
                                      "of the precision's widest instruction on the rank's threads: kernels/cpu/peak.h)");
    v(threads, "threads", "OpenMP threads per rank; 0 = OMP_NUM_THREADS, or the cores shared among the ranks on this machine");
    v(model_preset, "model_preset", "named model preset applied before the model fields");
    v(save_interval, "save_interval", "steps between checkpoints in out_dir/checkpoints (and at the end); 0 = none");
    v(keep_checkpoints, "keep_checkpoints", "newest checkpoints kept; 0 = keep all");
    v(resume, "resume", "continue from a checkpoint folder or a save folder (its `latest`); its config is the base");
    v(init_from, "init_from", "start from these weights (optimizer and step fresh): a model file, a checkpoint "
                              "folder or a Hugging Face folder; the model fields default to its architecture and the "
                              "tokenizer to its own");
    v(init_new, "init_new", "comma-separated globs of parameters that init_from may lack; they keep their fresh "
                            "initialisation and are listed at start");
    v(teacher, "teacher", "knowledge distillation: train on the forward KL from this frozen teacher's distribution "
                          "(a model file, checkpoint or Hugging Face folder with the same vocabulary) instead of the "
                          "cross-entropy; under any layout (the teacher's layers over the same pipeline stages)");
    v(kd_temperature, "kd_temperature", "distillation temperature tau: the loss is tau^2 KL(softmax(z_t / tau) || "
                                        "softmax(z_s / tau))");
    v(kd_hidden_cosine, "kd_hidden_cosine", "distillation: add 1 - cos between the student's and the teacher's final "
                                            "norm outputs (through a learned projection, distill.projection.weight, "
                                            "when their widths differ), rescaled each micro-batch to the KD loss's "
                                            "magnitude");
    v(kd_lm_loss, "kd_lm_loss", "distillation: keep the cross-entropy CE as well; the KD term is rescaled each "
                                "micro-batch to CE's magnitude (by the detached ratio CE / KD) before it is added");
    v(objective, "objective", "what to minimise: cross_entropy (pre-training, SFT), or on preference pairs "
                              "(data_format = preference): bradley_terry (a reward model, model.head = value), dpo, "
                              "ipo, rpo_sq, rpo_fwd_kl, rpo_bwd_kl");
    v(pref_chosen_key, "pref_chosen_key", "preference: the key of the preferred response");
    v(pref_rejected_key, "pref_rejected_key", "preference: the key of the rejected response");
    v(pref_chosen_reward_key, "pref_chosen_reward_key", "preference: the key of the chosen response's ground-truth "
                                                        "reward (RPO)");
    v(pref_rejected_reward_key, "pref_rejected_reward_key", "preference: the key of the rejected response's "
                                                            "ground-truth reward (RPO)");
    v(dpo_beta, "dpo_beta", "beta: DPO's loss is -log sigmoid(beta (Delta_chosen - Delta_rejected)), Delta the "
                            "policy's log-prob of a response minus the reference's");
    v(dpo_average_log_probs, "dpo_average_log_probs", "DPO family: use the mean of a response's token log-probs "
                                                      "instead of their sum");
    v(dpo_sft_weight, "dpo_sft_weight", "DPO family: add this weight times the chosen responses' negative "
                                        "log-likelihood (summed over each response, mean over pairs)");
    v(rpo_eta, "rpo_eta", "RPO: the ground-truth reward difference is scaled by eta");
    v(reference, "reference", "DPO family: the frozen reference model (a model file, checkpoint or Hugging Face "
                              "folder); empty: the init_from model, which under LoRA is the policy itself with its "
                              "adapters off (no second copy of the weights)");
    v(steerlm_attributes, "steerlm_attributes", "SteerLM: comma-separated attribute names (e.g. quality,toxicity,"
                                                "humor,creativity); an attribute model predicts them (data_format "
                                                "attributes, objective attribute_regression, value_outputs = their "
                                                "number), and SFT data with them is conditioned on them");
    v(upcycle_experts, "upcycle_experts", "upcycling: the init_from dense model becomes an MoE of this many experts "
                                          "per chosen MLP layer (0 = no upcycling)");
    v(upcycle_top_k, "upcycle_top_k", "upcycling: experts per token");
    v(upcycle_granularity, "upcycle_granularity", "upcycling: G, expert width = dense ffn_hidden / G");
    v(upcycle_softmax_then_topk, "upcycle_softmax_then_topk", "upcycling: router order; true: softmax over all experts "
                                                              "then top-k (no renormalisation); false: top-k then "
                                                              "softmax over the k");
    v(upcycle_virtual_groups, "upcycle_virtual_groups", "upcycling: expert e holds shard e mod G and a group's router "
                                                        "rows are equal (false: random shards and router)");
    v(upcycle_scale, "upcycle_scale", "upcycling: scale the experts so the MoE starts with the dense MLP's output scale");
    v(upcycle_scale_down_only, "upcycle_scale_down_only", "upcycling: put the whole scale on down_proj (exact at step "
                                                          "0 for any activation, SwiGLU included) instead of spreading "
                                                          "it over the expert's projections");
    v(upcycle_layers, "upcycle_layers", "upcycling: which MLP layers become MoE: all, every_other (the 2nd, 4th, ...) "
                                        "or MLP indices such as 0,2,5");
    v(upcycle_router_std, "upcycle_router_std", "upcycling: std of the new router's random rows");
    v(spin_iterations, "spin_iterations", "SPIN: iterations (generate, pair, train with DPO, promote)");
    v(spin_max_new_tokens, "spin_max_new_tokens", "SPIN: longest generated response, in tokens");
    v(spin_temperature, "spin_temperature", "SPIN: sampling temperature of the generated responses (0 = greedy)");
    v(spin_top_k, "spin_top_k", "SPIN: sample among the top k tokens (0 = all)");
    v(spin_top_p, "spin_top_p", "SPIN: nucleus sampling threshold (1 = off)");
    v(reward_model, "reward_model", "PPO: the frozen reward model (a value head, e.g. from fivefold align rm)");
    v(critic_init, "critic_init", "PPO: where the critic (a value per token) starts; empty = the reward model");
    v(ppo_rollout_prompts, "ppo_rollout_prompts", "PPO: prompts rolled out per iteration, over all data-parallel "
                                                  "replicas (a multiple of DP x micro_batch x grad_accum)");
    v(ppo_max_new_tokens, "ppo_max_new_tokens", "PPO: longest generated response, in tokens");
    v(ppo_temperature, "ppo_temperature", "PPO: sampling temperature of the rollouts");
    v(ppo_top_k, "ppo_top_k", "PPO: sample among the top k tokens (0 = all)");
    v(ppo_top_p, "ppo_top_p", "PPO: nucleus sampling threshold (1 = off)");
    v(ppo_kl_beta, "ppo_kl_beta", "PPO: beta of the per-token KL penalty -beta |logp - logp_ref| in the rewards");
    v(ppo_absolute_kl, "ppo_absolute_kl", "PPO: the KL estimate |logp - logp_ref| (false: logp - logp_ref)");
    v(ppo_gamma, "ppo_gamma", "PPO: discount of GAE");
    v(ppo_lambda, "ppo_lambda", "PPO: lambda of GAE");
    v(ppo_clip, "ppo_clip", "PPO: the actor's ratio clip eps (ratios outside [1 - eps, 1 + eps] stop the gradient)");
    v(ppo_value_clip, "ppo_value_clip", "PPO: the critic's value clip around its rollout-time values");
    v(ppo_critic_lr, "ppo_critic_lr", "PPO: the critic's peak learning rate (the actor's is optim.lr)");
    v(ppo_only_ended, "ppo_only_ended", "PPO: the actor learns only from responses that ended with EOS (false: "
                                        "also from those cut at ppo_max_new_tokens)");
    v(ppo_entropy_coeff, "ppo_entropy_coeff", "PPO: weight c of the entropy bonus -c H in the actor's loss (its "
                                              "mean H is reported either way)");
    v(ppo_critic_warmup, "ppo_critic_warmup", "PPO: iterations that train only the critic before the actor starts");
    v(ppo_critic_ranks, "ppo_critic_ranks", "PPO placement: 0 = the four models share every rank and the layout; "
      "N > 0 = the critic and the reward model run on the last N ranks of the job with their own layout "
      "(ppo_critic_tp x ppo_critic_pp, data-parallel over the rest), the actor and the reference on the others "
      "with parallel.*, so that scoring and training overlap generation");
    v(ppo_critic_tp, "ppo_critic_tp", "PPO with ppo_critic_ranks > 0: the critic group's tensor-parallel size "
      "(sequence-parallel when parallel.sequence_parallel is)");
    v(ppo_critic_pp, "ppo_critic_pp", "PPO with ppo_critic_ranks > 0: the critic group's pipeline-parallel size");
    v(freeze, "freeze", "comma-separated globs of parameter names to freeze (no gradient, no optimizer state), e.g. "
                        "\"model.embed_tokens.*,model.layers.0.*\"; names as in model files (Hugging Face names)");
  }
  std::vector<std::string> validate() const;
};

struct RunConfig {
  ModelConfig model;
  OptimizerConfig optim;
  TrainConfig train;
  ParallelConfig parallel;

  std::vector<std::string> validate(int64_t world) const;
  // The rank groups of a job of `world` ranks. PPO with train.ppo_critic_ranks = N > 0 runs the
  // actor (and reference) on the first world - N ranks with `parallel`, the critic (and reward
  // model) on the last N with ppo_critic_layout(); every other job has one group, the world.
  int64_t actor_world(int64_t world) const { return world - train.ppo_critic_ranks; }
  ParallelConfig ppo_critic_layout() const;
};

// Parses a JSON document (text) into a RunConfig on top of the defaults (and of the preset named
// by train.model_preset). Throws ff::Error listing every problem.
RunConfig run_config_from_json(const std::string& text, const std::string& source_name);
// Every rank of a job must have resolved the same config (ranks started with other flags or
// files would fail inside a collective, or train a worse model silently). Collective over world:
// rank 0's config goes to all; a rank whose own differs fails naming the first field that does.
void check_same_config_on_every_rank(RunConfig& c, const Communicator& world);
std::string run_config_to_json(RunConfig& c);

}  // namespace ff
