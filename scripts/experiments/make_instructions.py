"""A small instruction set for the SFT + LoRA experiment, written for it: each example asks the
model to repeat a few words taken from the King James Bible, and the answer has a fixed format
("Answer: W1 W2 W3."), so that after fine-tuning one can see whether generation follows it.

Usage: make_instructions.py KJV_TEXT OUT_DIR [SEED]
Writes OUT_DIR/sft.jsonl (900 examples; the trainer's split 90,10,0 keeps the last 90 for
validation) and OUT_DIR/heldout_prompts.jsonl (the prompts of those 90, for generation), each
line a JSON object. Deterministic given the seed.
"""
import json
import os
import random
import re
import sys

kjv, out = sys.argv[1], sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 7
rng = random.Random(seed)
with open(kjv, encoding="utf-8", errors="replace") as f:
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{3,9}", f.read())})
asks = ["Repeat after me: {}", "Say these words back: {}", "Echo the words {}", "Please repeat: {}"]
examples = []
for _ in range(900):
    w = rng.sample(words, rng.choice([2, 3]))
    examples.append({"prompt": rng.choice(asks).format(" ".join(w)), "response": "Answer: " + " ".join(w) + "."})
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "sft.jsonl"), "w") as f:
    for e in examples:
        f.write(json.dumps(e) + "\n")
with open(os.path.join(out, "heldout_prompts.jsonl"), "w") as f:
    for e in examples[810:]:
        f.write(json.dumps({"prompt": e["prompt"], "expected": e["response"]}) + "\n")
