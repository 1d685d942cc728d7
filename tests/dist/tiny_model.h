// The tiny MoE model of the distributed tests: 2 blocks (*E*E), 4 heads / 2 KV heads, 4 experts
// top-2, vocabulary 32, sequences of 8; every size divides the layouts the tests use.
#pragma once
#include "models/config.h"

namespace ff::test {

inline ModelConfig tiny_moe() {
  ModelConfig c;
  c.vocab_size = 32;
  c.d_model = 16;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.seq_len = 8;
  c.num_experts = 4;
  c.moe_top_k = 2;
  c.moe_ffn_hidden = 12;
  c.moe_aux_loss_coeff = 0.1;
  c.moe_z_loss_coeff = 0.01;
  c.init_std = 0.3;
  return c;
}

}  // namespace ff::test
