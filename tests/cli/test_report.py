"""`fivefold report` end to end: three short runs of the moe-tiny preset (4 steps; 1 step; 2 steps
stopped at a checkpoint and resumed to 3, so its metrics.jsonl was truncated at the resume), one
report over all of them, opened in headless Chromium. Checked in the DOM Chromium built: no
console error, one chart per metric with both axes, tick labels and exactly one path per run,
the expert-load heatmaps of every run (8 experts x its steps, per MoE layer), the layout table
and each run's resolved config; every <svg> is well-formed XML on its own. Then the bad inputs:
a folder without metrics.jsonl, a malformed line, an unwritable --out (one message naming the
file, nonzero exit), and an incomplete last line (left out, not fatal).

Usage: test_report.py FIVEFOLD. Exits non-zero on any failure.
"""
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

fivefold = sys.argv[1]
failures = []
if not shutil.which("chromium"):
    sys.exit("chromium is missing (Debian package chromium): run scripts/setup.sh")


def check(what, ok, detail=""):
    print("%-64s %s" % (what, "ok" if ok else "FAILED " + str(detail)[-1200:]))
    if not ok:
        failures.append(what)


class Dom(html.parser.HTMLParser):
    """Elements as (tag, attrs, ancestors' indices), enough to count what lies inside what."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "wbr", "col", "source"}  # HTML's, which have no end tag

    def __init__(self):
        super().__init__()
        self.elements, self.stack, self.text = [], [], {}

    def handle_data(self, data):
        if self.stack:
            self.text[self.stack[-1]] = self.text.get(self.stack[-1], "") + data

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), list(self.stack)))
        if tag not in self.VOID:
            self.stack.append(len(self.elements) - 1)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), list(self.stack)))

    def handle_endtag(self, tag):
        if not any(self.elements[i][0] == tag for i in self.stack):
            return  # a stray end tag closes nothing
        while self.elements[self.stack[-1]][0] != tag:
            self.stack.pop()
        self.stack.pop()

    def find(self, tag=None, cls=None, inside=None, **attrs):
        out = []
        for i, (t, a, anc) in enumerate(self.elements):
            if tag and t != tag:
                continue
            if cls and cls not in a.get("class", "").split():
                continue
            if inside is not None and inside not in anc:
                continue
            if any(a.get(k.replace("_", "-")) != v for k, v in attrs.items()):
                continue
            out.append(i)
        return out


def train(out, extra):
    r = subprocess.run([fivefold, "train", "--data_path", corpus, "--tokenizer_type", "byte", "--model_preset",
                        "moe-tiny", "--seq_len", "32", "--micro_batch", "2", "--eval_interval", "2",
                        "--eval_samples", "2", "--peak_tflops", "1", "--split", "90,10,0", "--out_dir", out] + extra,
                       capture_output=True, text=True, timeout=120)
    check("train " + os.path.basename(out) + " " + " ".join(extra), r.returncode == 0, r.stdout + r.stderr)


def report(args):
    return subprocess.run([fivefold, "report"] + args, capture_output=True, text=True, timeout=60)


def chromium_dom(page):
    profile = os.path.join(tmp, "chromium-profile")
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        "--user-data-dir=" + profile, "--dump-dom", "file://" + os.path.abspath(page)],
                       capture_output=True, text=True, timeout=90)
    return r


tmp = tempfile.mkdtemp(prefix="fivefold_report_")
corpus = os.path.join(tmp, "corpus.txt")
with open(corpus, "w") as f:
    for i in range(300):
        f.write("line %d: the quick brown fox jumps over the lazy dog.\n\n" % i)
a, b, c = (os.path.join(tmp, n) for n in ("four-steps", "one-step", "resumed"))
train(a, ["--steps", "4"])
train(b, ["--steps", "1", "--lr", "1e-3"])
train(c, ["--steps", "2", "--save_interval", "1"])
train(c, ["--steps", "3", "--resume", os.path.join(c, "checkpoints")])
runs = [a, b, c]
steps = {a: 4, b: 1, c: 3}

# What the runs wrote for the report.
for run in runs:
    recs = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    check("%s: metrics steps 1..%d, unique" % (os.path.basename(run), steps[run]),
          [r["step"] for r in recs] == list(range(1, steps[run] + 1)), [r["step"] for r in recs])
    load_ok = all(len(r["expert_load"]) == 4 and all(len(l) == 8 and abs(sum(l) - 1) < 1e-12 for l in r["expert_load"])
                  for r in recs)
    check("%s: expert_load = 4 layers x 8 shares summing to 1" % os.path.basename(run), load_ok, recs[0].get("expert_load"))
    check("%s: peak_memory_bytes > 1 MiB" % os.path.basename(run),
          all(r["peak_memory_bytes"] > 2 ** 20 for r in recs), recs[0].get("peak_memory_bytes"))
    cfg = json.load(open(os.path.join(run, "run_config.json")))
    layout = json.load(open(os.path.join(run, "layout.json")))
    check("%s: run_config.json and layout.json" % os.path.basename(run),
          cfg["train"]["model_preset"] == "moe-tiny" and layout["world_size"] == 1 and layout["dp"] == 1, layout)

# One run: the page goes into its folder by default.
r = report([a])
check("report of one run writes RUN_DIR/report.html", r.returncode == 0 and os.path.exists(os.path.join(a, "report.html")),
      r.stdout + r.stderr)

page = os.path.join(tmp, "all.html")
r = report(runs + ["--out", page])
check("report of three runs", r.returncode == 0 and os.path.exists(page), r.stdout + r.stderr)
text = open(page).read() if os.path.exists(page) else ""
check("self-contained: no script, no external reference",
      "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and
      "https://" not in text and "src=" not in text)
svgs = text.split("<svg")[1:]
bad = []
for s in svgs:
    try:
        ET.fromstring("<svg" + s[:s.index("</svg>") + 6])
    except ET.ParseError as e:
        bad.append(str(e))
check("every <svg> is well-formed XML (%d of them)" % len(svgs), svgs and not bad, bad[:3])

shown = chromium_dom(page)
errors = [line for line in shown.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
check("Chromium loads the page without console errors",
      shown.returncode == 0 and "<body" in shown.stdout and not errors, (errors or [shown.stderr])[-5:])
dom = Dom()
dom.feed(shown.stdout)

expected_charts = ["loss", "valid_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "aux_loss", "peak_memory_bytes"]
for metric in expected_charts:
    figs = dom.find("figure", "chart", data_metric=metric)
    if len(figs) != 1:
        check("chart %s" % metric, False, "%d figures" % len(figs))
        continue
    paths = dom.find("path", "series", inside=figs[0])
    ax_x = dom.find("line", "axis", inside=figs[0])
    ticks = dom.find("text", "tick", inside=figs[0])
    series = sorted(dom.elements[p][1].get("data-series") for p in paths)
    check("chart %s: 2 axes, ticks, one path per run" % metric,
          len(ax_x) == 2 and len(ticks) >= 4 and series == ["0", "1", "2"], (len(ax_x), len(ticks), series))
# A metric every run recorded as zeros is a note, not an empty chart (dropless routing drops nothing).
check("dropped_fraction (all 0): a note, no chart",
      not dom.find("figure", "chart", data_metric="dropped_fraction") and dom.find("li", "note", data_metric="dropped_fraction"))
for i, run in enumerate(runs):
    sec = dom.find("section", "expert-load", data_run=str(i))
    maps = [dom.elements[g][1] for g in dom.find("g", "heatmap", inside=sec[0])] if sec else []
    per_expert = [m for m in maps if m.get("data-rows") == "8" and m.get("data-cols") == str(steps[run])]
    summary = [m for m in maps if m.get("data-rows") == "4"]
    check("expert-load heatmaps of %s: 4 layers of 8 x %d, and the summary" % (os.path.basename(run), steps[run]),
          len(per_expert) == 4 and len(summary) == 1, maps)
table = dom.find("table", "layout")
rows = dom.find("tr", inside=table[0]) if table else []
heads = [dom.elements[i] for i in dom.find("th", inside=table[0])] if table else []
check("layout table: a header and one row per run", len(rows) == 4, len(rows))
configs = dom.find("details", "config")
pres = [p for d in configs for p in dom.find("pre", inside=d)]
def parsed(i):
    try:
        return json.loads(dom.text.get(i, ""))
    except ValueError:
        return {}
check("each run's resolved config, as JSON", len(configs) == 3 and len(pres) == 3 and
      all(parsed(p).get("train", {}).get("model_preset") == "moe-tiny" for p in pres), [dom.text.get(p, "")[:80] for p in pres])
check("the layout columns (world, tp, cp, dp, pp, ep, etp, edp, SP, ...)", len(heads) >= 12 and
      all("<th>%s</th>" % k in text for k in ("world_size", "tp", "cp", "dp", "pp", "ep", "etp", "edp", "SP")), len(heads))

# Bad input: one clear message naming the file, and a nonzero exit.
empty = os.path.join(tmp, "empty")
os.makedirs(empty)
r = report([a, empty, "--out", os.path.join(tmp, "never.html")])
said = (r.stdout + r.stderr).count(os.path.join(empty, "metrics.jsonl"))
check("a folder without metrics.jsonl: nonzero, named once", r.returncode != 0 and said == 1 and
      not os.path.exists(os.path.join(tmp, "never.html")), r.stdout + r.stderr)
broken = os.path.join(tmp, "broken")
shutil.copytree(a, broken)
lines = open(os.path.join(broken, "metrics.jsonl")).read().splitlines(True)
with open(os.path.join(broken, "metrics.jsonl"), "w") as f:
    f.writelines(lines[:1] + ["{\"step\": 2, oops\n"] + lines[2:])
r = report([broken])
check("a malformed line: nonzero, names file and line", r.returncode != 0 and
      (r.stdout + r.stderr).count(os.path.join(broken, "metrics.jsonl") + " line 2") == 1, r.stdout + r.stderr)
r = report([a, "--out", os.path.join(tmp, "no", "such", "folder", "r.html")])
check("an unwritable --out: nonzero, names it", r.returncode != 0 and
      (r.stdout + r.stderr).count(os.path.join(tmp, "no", "such", "folder", "r.html")) == 1, r.stdout + r.stderr)
going = os.path.join(tmp, "going")
shutil.copytree(a, going)
with open(os.path.join(going, "metrics.jsonl"), "a") as f:
    f.write("{\"step\": 5, \"loss\": 1.0, \"lr\"")
r = report([going])
out = open(os.path.join(going, "report.html")).read() if r.returncode == 0 else ""
check("an incomplete last line is left out, with a note", r.returncode == 0 and "incomplete" in out and
      'data-cols="4"' in out, r.stdout + r.stderr)

shutil.rmtree(tmp, ignore_errors=True)
print("%d failed" % len(failures))
sys.exit(1 if failures else 0)
