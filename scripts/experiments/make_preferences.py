"""The hidden-oracle toy task of the alignment experiment (specs/methods.md §6.8), written for
scripts/experiments/align_toy.sh. A prompt is 8 random letters of the alphabet "abcdefgh" and a
colon ("bdhagcef:"); a response is 10 letters. The SFT data pairs each prompt with 10 uniformly
random letters, so a model trained on it learns the format but no preference. The hidden oracle,
which no model ever sees, scores a response by how many times it contains the letter "a" (0 to
10); a response that is not exactly 10 letters of the alphabet scores 0.

Usage:
  make_preferences.py data OUT_DIR [SEED]
      OUT_DIR/sft.jsonl (4000 {prompt, response}), OUT_DIR/train_prompts.jsonl (2000 prompts to
      sample preference pairs from) and OUT_DIR/heldout_prompts.jsonl (500 others, for held-out
      pairs and the win rate). Deterministic given the seed (default 7).
  make_preferences.py pairs OUT.jsonl TRAIN_GEN_1 ... -- HELDOUT_GEN_1 ...
      From K generation files per prompt set (`fivefold generate --output jsonl`, one line per
      prompt, same order), one pair per prompt: chosen = the highest-scoring sample, rejected =
      the lowest (the first such in file order); prompts whose samples all score the same are
      dropped. Writes the train pairs then the held-out pairs to OUT.jsonl and prints
      "N_TRAIN N_HELDOUT" (use them as the trainer's --split N_TRAIN,N_HELDOUT,0).
  make_preferences.py compare BASE_GEN NEW_GEN
      Oracle win rate of NEW over BASE on the same prompts (1 per prompt if NEW scores higher,
      0.5 a tie, 0 lower), the mean score of each, the fraction of well-formed responses and of
      distinct responses; printed as one JSON object.
"""
import json
import os
import random
import sys

ALPHABET = "abcdefgh"
PROMPT_LEN, RESPONSE_LEN = 8, 10
TARGET = "a"


def oracle(text):
    if len(text) != RESPONSE_LEN or any(c not in ALPHABET for c in text):
        return 0
    return text.count(TARGET)


def well_formed(text):
    return len(text) == RESPONSE_LEN and all(c in ALPHABET for c in text)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def letters(rng, n):
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def cmd_data(out, seed=7):
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    prompts = set()

    def new_prompt():  # distinct prompts across the three files
        while True:
            p = letters(rng, PROMPT_LEN) + ":"
            if p not in prompts:
                prompts.add(p)
                return p

    write_jsonl(os.path.join(out, "sft.jsonl"),
                [{"prompt": new_prompt(), "response": letters(rng, RESPONSE_LEN)} for _ in range(4000)])
    write_jsonl(os.path.join(out, "train_prompts.jsonl"), [{"prompt": new_prompt()} for _ in range(2000)])
    write_jsonl(os.path.join(out, "heldout_prompts.jsonl"), [{"prompt": new_prompt()} for _ in range(500)])


def make_pairs(gen_files):
    gens = [read_jsonl(g) for g in gen_files]
    n = len(gens[0])
    assert all(len(g) == n for g in gens), "generation files differ in length"
    pairs = []
    for i in range(n):
        samples = [g[i] for g in gens]
        assert all(s["prompt"] == samples[0]["prompt"] for s in samples), "prompts differ at line %d" % (i + 1)
        scores = [oracle(s["text"]) for s in samples]
        hi, lo = scores.index(max(scores)), scores.index(min(scores))
        if scores[hi] == scores[lo]:
            continue
        pairs.append({"prompt": samples[0]["prompt"], "chosen": samples[hi]["text"], "rejected": samples[lo]["text"],
                      "chosen_reward": scores[hi], "rejected_reward": scores[lo]})
    return pairs


def cmd_pairs(out, args):
    cut = args.index("--")
    train, held = make_pairs(args[:cut]), make_pairs(args[cut + 1:])
    write_jsonl(out, train + held)
    print(len(train), len(held))


def cmd_compare(base_file, new_file):
    base, new = read_jsonl(base_file), read_jsonl(new_file)
    assert len(base) == len(new) and all(a["prompt"] == b["prompt"] for a, b in zip(base, new))
    sb = [oracle(g["text"]) for g in base]
    sn = [oracle(g["text"]) for g in new]
    win = sum(1.0 if b > a else 0.5 if b == a else 0.0 for a, b in zip(sb, sn)) / len(sb)
    print(json.dumps({
        "n": len(sb), "win_rate": win,
        "base_score": sum(sb) / len(sb), "new_score": sum(sn) / len(sn),
        "base_well_formed": sum(well_formed(g["text"]) for g in base) / len(base),
        "new_well_formed": sum(well_formed(g["text"]) for g in new) / len(new),
        "base_distinct": len({g["text"] for g in base}) / len(base),
        "new_distinct": len({g["text"] for g in new}) / len(new),
        "base_hist": [sb.count(k) for k in range(RESPONSE_LEN + 1)],
        "new_hist": [sn.count(k) for k in range(RESPONSE_LEN + 1)],
    }))


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "data":
        cmd_data(rest[0], int(rest[1]) if len(rest) > 1 else 7)
    elif cmd == "pairs":
        cmd_pairs(rest[0], rest[1:])
    elif cmd == "compare":
        cmd_compare(rest[0], rest[1])
    else:
        sys.exit(__doc__)
