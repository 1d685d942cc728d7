// `fivefold align ppo` (specs/methods.md §6.4): RLHF with PPO, four models in one job (DESIGN
// decision 14), on the same ranks and layout or on two rank groups (recipes/ppo/ppo_placement.h):
//   actor      role "model", trainable, from train.init_from (an SFT model);
//   reference  frozen: the initial actor (or train.reference); under LoRA the actor with its
//              adapters off, with no second copy of the weights;
//   reward     frozen: train.reward_model, a value head (e.g. from `fivefold align rm`) whose
//              value at a sequence's last response row is its score;
//   critic     role "critic", trainable: a value per row, from train.critic_init (default: the
//              reward model), with its own AdamW at train.ppo_critic_lr.
// Each of train.steps iterations:
//   1. rollouts: ppo_rollout_prompts prompts of the prompt file (train.data_path, JSONL with
//      train.sft_prompt_key, rendered by train.chat_template; taken in order, cycled) decoded by
//      the actor with the KV cache (ppo_temperature, ppo_top_k, ppo_top_p, at most
//      ppo_max_new_tokens; EOS ends a response). Every replica decodes the whole batch (the
//      generator's contract: the same prompts on every rank, which keeps EP's all-to-alls in
//      lockstep) and keeps its share. Split, the actor decodes the batch in chunks of one optimizer step, each handed to the
//      critic's ranks, which score it while the next is decoded;
//   2. scoring, forward only: the actor's and the reference's log-probs of the response rows, the
//      critic's values, the reward model's score;
//   3. rewards with the per-token KL penalty, GAE, advantages whitened over all replicas
//      (recipes/ppo/advantages.h);
//   4. one pass over the rollouts in optimizer steps of grad_accum x micro_batch sequences per
//      actor replica: the critic's clipped value loss, and from iteration ppo_critic_warmup + 1 on
//      the actor's clipped loss over the sequences that ended (recipes/ppo/ppo_objective.h). A
//      split critic group of other data-parallel size takes the same sequences per step (its
//      micro-batches per step scaled), and trains while the actor does.
// Metrics per iteration go to out_dir/metrics.jsonl and the console. Checkpoints hold the actor,
// the critic and both optimizers; the rollouts' sampling seed and prompts derive from the
// iteration, so a resumed run draws the same rollouts. At the end out_dir/model.safetensors is
// the actor, out_dir/critic.safetensors the critic.
#pragma once

#include "parallel/grid.h"
#include "train/config.h"

namespace ff {

// Collective over world, every rank of the job. cfg: the resolved run (train.init_from the SFT
// model); the placement (recipes/ppo/ppo_placement.h) follows train.ppo_critic_ranks.
void run_ppo(const RunConfig& cfg, const Communicator& world, bool quiet = false);

}  // namespace ff
