#include "train/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "io/progress.h"

namespace ff {

int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& o, Rng& rng) {
  if (o.temperature == 0) {
    int32_t best = 0;
    for (int64_t v = 1; v < vocab; ++v)
      if (logits[v] > logits[best]) best = static_cast<int32_t>(v);
    return best;
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  std::vector<double> p(static_cast<size_t>(k));
  const double mx = logits[order[0]];
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += p[static_cast<size_t>(j)] = std::exp((logits[order[static_cast<size_t>(j)]] - mx) / o.temperature);
  // Nucleus: the smallest prefix of the sorted tokens whose probability reaches top_p.
  int64_t n = k;
  if (o.top_p < 1.0) {
    double acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      acc += p[static_cast<size_t>(j)] / sum;
      if (acc >= o.top_p) {
        n = j + 1;
        break;
      }
    }
    sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += p[static_cast<size_t>(j)];
  }
  double u = static_cast<double>(rng.uniform()) * sum;
  for (int64_t j = 0; j < n; ++j) {
    u -= p[static_cast<size_t>(j)];
    if (u <= 0) return order[static_cast<size_t>(j)];
  }
  return order[static_cast<size_t>(n - 1)];
}

namespace {

// Runs T new tokens per sequence through every chunk of this rank, relaying activations between
// pipeline stages; afterwards the last stage's d.logits holds [B, V].
void decode_step(DecoderLM& model, const ParallelGrid& grid, DecoderLM::Decoder& d, const std::vector<int32_t>& tokens,
                 int64_t T) {
  const Communicator& pp = grid.pp();
  const int64_t P = pp.size(), p = pp.rank(), V = model.num_chunks(), VS = P * V;
  const int64_t width = model.stream_rows(d.B, T) * model.config().d_model;
  std::vector<float> input;
  for (int64_t c = 0; c < V; ++c) {
    const int64_t vs = c * P + p;
    if (vs > 0) {
      input.resize(static_cast<size_t>(width));
      pp.recv(input.data(), width, static_cast<int>((vs - 1) % P), static_cast<int>(vs));
    }
    const float* out = model.decode_chunk(d, c, tokens.data(), T, vs > 0 ? input.data() : nullptr);
    if (vs < VS - 1) {
      pp.send(out, width, static_cast<int>((vs + 1) % P), static_cast<int>(vs + 1));
      pp.wait_sends();
    }
  }
  model.advance(d, T);
}

}  // namespace

std::vector<Generated> generate(DecoderLM& model, const ParallelGrid& grid, const Tokenizer& tokenizer,
                                const std::vector<std::vector<int32_t>>& prompts, const SamplingOptions& o,
                                GenerationStats* stats, bool progress) {
  FF_CHECK(!prompts.empty(), "generate: no prompts");
  for (const auto& pr : prompts) FF_CHECK(!pr.empty(), "generate: a prompt of no tokens; give at least one character");
  FF_CHECK(o.temperature >= 0 && o.top_k >= 0 && o.top_p > 0 && o.top_p <= 1 && o.max_new_tokens >= 0,
           "generate: temperature >= 0, top_k >= 0, top_p in (0, 1] and max_new_tokens >= 0 are required");
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& cfg = model.config();
  const int64_t n = static_cast<int64_t>(prompts.size()), tp = grid.tp().size();
  const int64_t B = (n + tp - 1) / tp * tp;  // padded with copies of the last prompt (discarded)
  const int64_t W = cfg.seq_len, V = cfg.vocab_size, Vt = std::min(V, tokenizer.vocab_size());
  const bool last_stage = grid.pp().rank() == grid.pp().size() - 1;
  std::vector<std::vector<int32_t>> seq(static_cast<size_t>(B));
  std::vector<size_t> prompt_len(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    seq[static_cast<size_t>(b)] = prompts[static_cast<size_t>(std::min(b, n - 1))];
    prompt_len[static_cast<size_t>(b)] = seq[static_cast<size_t>(b)].size();
  }
  std::vector<Rng> rngs;
  for (int64_t b = 0; b < B; ++b) rngs.emplace_back(o.seed, "generate", o.first_stream + static_cast<uint64_t>(b));
  std::vector<Generated> out(static_cast<size_t>(n));
  std::vector<bool> done(static_cast<size_t>(B), false);
  for (int64_t b = n; b < B; ++b) done[static_cast<size_t>(b)] = true;
  if (o.max_new_tokens == 0) {
    for (auto& g : out) g.finish = "length";
    return out;
  }

  auto d = model.new_decoder(B, W);
  size_t fed = *std::min_element(prompt_len.begin(), prompt_len.end());  // tokens of every sequence fed so far
  size_t window = fed > static_cast<size_t>(W) ? fed - static_cast<size_t>(W) / 2 : 0;  // first token in context
  // Feeds positions [from, to) of every sequence (relative to the context's start `window`).
  auto feed = [&](size_t from, size_t to, bool restart) {
    if (restart) d->length = 0;
    const int64_t T = static_cast<int64_t>(to - from);
    std::vector<int32_t> tokens(static_cast<size_t>(B * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        tokens[static_cast<size_t>(b * T + t)] = seq[static_cast<size_t>(b)][from + static_cast<size_t>(t)];
    decode_step(model, grid, *d, tokens, T);
    if (stats) ++stats->steps;
  };
  feed(window, fed, true);
  std::vector<int32_t> next(static_cast<size_t>(B));
  // Counts each new token, and a sequence's unused budget when it ends, so the line reaches 100%.
  Progress shown("generate", n * o.max_new_tokens, ProgressUnit::count, "tokens",
                 printing(progress && grid.world_rank() == 0));
  auto ended = [&](const Generated& g) { shown.advance(o.max_new_tokens - static_cast<int64_t>(g.tokens.size())); };
  for (;;) {
    // Each sequence's token at position `fed`: its prompt's, or a sample from the last logits.
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      auto& s = seq[static_cast<size_t>(b)];
      if (fed < prompt_len[static_cast<size_t>(b)]) {
        next[static_cast<size_t>(b)] = s[fed];
        all_done = false;
        continue;
      }
      if (done[static_cast<size_t>(b)]) {
        next[static_cast<size_t>(b)] = s.back();  // keeps the lockstep; never read
        continue;
      }
      if (last_stage) next[static_cast<size_t>(b)] = sample_token(d->logits.data() + b * V, Vt, o, rngs[static_cast<size_t>(b)]);
      all_done = false;
    }
    // The last stage's samples go to every stage (the TP ranks of the last stage sample alike).
    if (grid.pp().size() > 1)
      grid.pp().broadcast(next.data(), static_cast<int64_t>(sizeof(int32_t) * next.size()), grid.pp().size() - 1);
    if (all_done) break;
    for (int64_t b = 0; b < n; ++b) {
      if (done[static_cast<size_t>(b)] || fed < prompt_len[static_cast<size_t>(b)]) continue;
      Generated& g = out[static_cast<size_t>(b)];
      const int32_t t = next[static_cast<size_t>(b)];
      if (t == tokenizer.eod()) {
        g.finish = "eos";
        done[static_cast<size_t>(b)] = true;
        ended(g);
        continue;
      }
      g.tokens.push_back(t);
      shown.advance(1);
      if (!o.stop.empty()) g.text = tokenizer.decode(g.tokens);  // (otherwise decoded once at the end)
      for (const auto& stop : o.stop) {
        const size_t at = stop.empty() ? std::string::npos : g.text.find(stop);
        if (at != std::string::npos) {
          g.text.resize(at);
          g.finish = "stop";
          if (!done[static_cast<size_t>(b)]) ended(g);
          done[static_cast<size_t>(b)] = true;
        }
      }
      if (!done[static_cast<size_t>(b)] && static_cast<int64_t>(g.tokens.size()) >= o.max_new_tokens) {
        g.finish = "length";
        done[static_cast<size_t>(b)] = true;
      }
    }
    for (int64_t b = 0; b < B; ++b)  // a sequence past its prompt takes its new token
      if (seq[static_cast<size_t>(b)].size() == fed) seq[static_cast<size_t>(b)].push_back(next[static_cast<size_t>(b)]);
    bool any = false;
    for (int64_t b = 0; b < n; ++b) any = any || !done[static_cast<size_t>(b)];
    if (!any) break;
    ++fed;
    if (fed - window > static_cast<size_t>(W)) {  // the context is full: restart from its last half
      window = fed - static_cast<size_t>(W) / 2;
      feed(window, fed, true);
    } else if (o.kv_cache) {
      feed(fed - 1, fed, false);
    } else {
      feed(window, fed, true);
    }
  }
  shown.finish();
  for (auto& g : out)
    if (g.finish != "stop") g.text = tokenizer.decode(g.tokens);
  if (stats) {
    for (const auto& g : out) stats->new_tokens += static_cast<int64_t>(g.tokens.size());
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return out;
}

}  // namespace ff
