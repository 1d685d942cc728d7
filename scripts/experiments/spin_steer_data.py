"""Data and measurements of scripts/experiments/align_spin_steer.sh: SPIN (specs/methods.md §6.6)
and SteerLM (§6.5) on the hidden-oracle toy task of make_preferences.py (8-letter prompts,
10-letter responses over "abcdefgh", the oracle counts the "a"s; 0 for a malformed response).

Usage:
  spin_steer_data.py data OUT_DIR [SEED]
      OUT_DIR/spin.jsonl: 2,200 {prompt, response} records whose responses are the "real" data
      of SPIN: each letter is "a" with probability 0.5, else uniform over the other 7, so the
      oracle score is Binomial(10, 0.5) (mean 5; the SFT model of make_preferences.py's data
      scores about 1.25). The first 2,000 train, the last 200 are held out (--split 2000,200,0);
      OUT_DIR/spin_heldout.jsonl holds those 200.
      OUT_DIR/steer_rated.jsonl: 2,000 {prompt, response, a_level} records, the "human-rated"
      data of the attribute model; OUT_DIR/steer_sft.jsonl: 4,000 {prompt, response} records
      to annotate. In both, each response draws its own P("a") uniformly from [0, 1] (so the
      number of "a"s is uniform on 0..10) and a_level = min(4, count // 2).
      Prompts are distinct and none is in make_preferences.py's files. Deterministic (seed 8).
  spin_steer_data.py margin_pairs REAL.jsonl GEN.jsonl OUT.jsonl
      Pairs {prompt, chosen: REAL's response, rejected: GEN's text} for the same prompts in the
      same order, written twice (train part = valid part, --split 1,1,0): the input of a
      one-step, lr ~0 `align dpo` run whose first step's metrics are the implicit-reward margin,
      rewards and accuracy on exactly these pairs. Prints the number of pairs.
  spin_steer_data.py score GEN.jsonl
      Oracle score of a generation file: mean, well-formed and distinct fractions, histogram;
      one JSON object. Trailing whitespace of a response is stripped (SteerLM's nemo turns end
      with a newline).
  spin_steer_data.py annotation ANNOTATED.jsonl
      How `align steerlm annotate`'s a_level agrees with the oracle's level of each response:
      exact fraction, mean absolute error, confusion counts; one JSON object.
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_preferences import ALPHABET, PROMPT_LEN, RESPONSE_LEN, TARGET, oracle, read_jsonl, well_formed, write_jsonl  # noqa: E402

N_SPIN_TRAIN, N_SPIN_HELD = 2000, 200
N_RATED, N_STEER_SFT = 2000, 4000
OTHERS = [c for c in ALPHABET if c != TARGET]


def level(text):
    return min(4, oracle(text) // 2)


def response(rng, p_a):
    return "".join(TARGET if rng.random() < p_a else rng.choice(OTHERS) for _ in range(RESPONSE_LEN))


def cmd_data(out, seed=8):
    rng = random.Random(seed)
    taken = set()
    for name in ("sft.jsonl", "train_prompts.jsonl", "heldout_prompts.jsonl"):  # make_preferences.py's prompts
        path = os.path.join(out, name)
        if os.path.exists(path):
            taken.update(r["prompt"] for r in read_jsonl(path))

    def new_prompt():
        while True:
            p = "".join(rng.choice(ALPHABET) for _ in range(PROMPT_LEN)) + ":"
            if p not in taken:
                taken.add(p)
                return p

    os.makedirs(out, exist_ok=True)
    spin = [{"prompt": new_prompt(), "response": response(rng, 0.5)} for _ in range(N_SPIN_TRAIN + N_SPIN_HELD)]
    write_jsonl(os.path.join(out, "spin.jsonl"), spin)
    write_jsonl(os.path.join(out, "spin_heldout.jsonl"), spin[N_SPIN_TRAIN:])
    rated = []
    for _ in range(N_RATED):
        r = {"prompt": new_prompt(), "response": response(rng, rng.random())}
        r["a_level"] = level(r["response"])
        rated.append(r)
    write_jsonl(os.path.join(out, "steer_rated.jsonl"), rated)
    write_jsonl(os.path.join(out, "steer_sft.jsonl"),
                [{"prompt": new_prompt(), "response": response(rng, rng.random())} for _ in range(N_STEER_SFT)])


def cmd_margin_pairs(real_file, gen_file, out):
    real, gen = read_jsonl(real_file), read_jsonl(gen_file)
    assert len(real) == len(gen) and all(a["prompt"] == b["prompt"] for a, b in zip(real, gen)), "prompts differ"
    pairs = [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["text"]} for a, b in zip(real, gen)]
    write_jsonl(out, pairs + pairs)
    print(len(pairs))


def cmd_score(gen_file):
    texts = [g["text"].rstrip() for g in read_jsonl(gen_file)]
    s = [oracle(t) for t in texts]
    print(json.dumps({
        "n": len(s), "score": sum(s) / len(s),
        "a_count": sum(t.count(TARGET) for t in texts) / len(texts),  # whatever the format
        "level": sum(min(4, v // 2) for v in s) / len(s),
        "well_formed": sum(well_formed(t) for t in texts) / len(texts),
        "distinct": len(set(texts)) / len(texts),
        "hist": [s.count(k) for k in range(RESPONSE_LEN + 1)],
    }))


def cmd_annotation(path):
    rows = read_jsonl(path)
    conf = [[0] * 5 for _ in range(5)]  # conf[true][annotated]
    for r in rows:
        a = r["attributes"]["a_level"] if "attributes" in r else r["a_level"]  # annotate writes an "attributes" object
        conf[level(r["response"])][int(a)] += 1
    n = len(rows)
    print(json.dumps({
        "n": n,
        "exact": sum(conf[i][i] for i in range(5)) / n,
        "mae": sum(abs(i - j) * conf[i][j] for i in range(5) for j in range(5)) / n,
        "confusion": conf,
    }))


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "data":
        cmd_data(rest[0], int(rest[1]) if len(rest) > 1 else 8)
    elif cmd == "margin_pairs":
        cmd_margin_pairs(*rest)
    elif cmd == "score":
        cmd_score(rest[0])
    elif cmd == "annotation":
        cmd_annotation(rest[0])
    else:
        sys.exit(__doc__)
