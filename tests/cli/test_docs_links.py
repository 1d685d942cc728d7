#!/usr/bin/env python3
"""Keeps the documentation honest.

1. Every relative Markdown link and image in README.md and docs/**/*.md names a file of the
   repository, and an anchor (`page.md#section`, `#section`) names a heading of that page
   (GitHub's heading slugs). No link leaves the repository: no URL, no absolute path, no
   relative path above the repository root. Paths written in prose or inline code that climb
   out of the repository (`../shared/...`) fail too.
2. With the binary as argument: every `--flag` written after `fivefold SUBCOMMAND` in a code
   block of those pages is one that SUBCOMMAND's `--help` lists, so renaming a flag without
   updating the docs fails here.

Usage: test_docs_links.py [FIVEFOLD_BINARY]
"""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)(.*)$")
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+[\w.\-/]*)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")


def pages():
    out = [os.path.join(ROOT, "README.md")]
    for d, _, files in os.walk(os.path.join(ROOT, "docs")):
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".md")]
    return sorted(out)


def split_blocks(text):
    """(prose lines, code blocks as (info string, lines)), fences removed."""
    prose, blocks, block, info = [], [], None, ""
    for line in text.split("\n"):
        m = FENCE.match(line)
        if m and block is None:
            block, info = [], m.group(2).strip()
            prose.append("")
        elif m and block is not None and not m.group(2).strip():
            blocks.append((info, block))
            block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def slug(heading):
    """GitHub's anchor of a heading: links reduced to their text, lower case, punctuation
    other than '-' and '_' dropped, spaces to '-'."""
    t = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    t = t.lower()
    t = re.sub(r"[^\w\- ]", "", t)
    return t.replace(" ", "-")


_anchor_cache = {}


def anchors(path):
    if path not in _anchor_cache:
        prose, _ = split_blocks(open(path, encoding="utf-8").read())
        seen, out = {}, set()
        for line in prose:
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else "%s-%d" % (s, n))
        _anchor_cache[path] = out
    return _anchor_cache[path]


def inside_root(p):
    return os.path.commonpath([ROOT, os.path.realpath(p)]) == ROOT


def check_links(page, problems):
    rel = os.path.relpath(page, ROOT)
    prose, _ = split_blocks(open(page, encoding="utf-8").read())
    for n, line in enumerate(prose, 1):
        no_code = re.sub(r"`[^`]*`", "", line)
        for m in LINK.finditer(no_code):
            target = m.group(1)
            where = "%s:%d: link '%s'" % (rel, n, target)
            if not target:
                problems.append(where + " is empty")
                continue
            if SCHEME.match(target) or target.startswith("//"):
                problems.append(where + " leaves the repository (a URL); link a page of the repository instead")
                continue
            path, _, anchor = target.partition("#")
            if path.startswith("/"):
                problems.append(where + " is an absolute path; use a path relative to the page")
                continue
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not inside_root(dest):
                problems.append(where + " leaves the repository")
                continue
            if not os.path.exists(dest):
                problems.append(where + " names a file that does not exist (%s)" % os.path.relpath(dest, ROOT))
                continue
            if anchor and dest.endswith(".md") and os.path.isfile(dest) and anchor not in anchors(dest):
                problems.append(where + " names no heading of %s (anchors there: %s)"
                                % (os.path.relpath(dest, ROOT), ", ".join(sorted(anchors(dest)))))
        # Paths in prose or inline code that climb above the repository.
        for m in CLIMB.finditer(line):
            dest = os.path.normpath(os.path.join(os.path.dirname(page), m.group(1)))
            if not inside_root(dest):
                problems.append("%s:%d: path '%s' points outside the repository" % (rel, n, m.group(1)))


# ---- flags in code blocks ----

def shell_commands(lines):
    """The commands of a shell code block: continuation lines joined, heredoc bodies and
    comments dropped, split at ; && || | and ( )."""
    joined, cur, heredoc = [], "", None
    for line in lines:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc = m.group(1)
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        joined.append(cur + line)
        cur = ""
    if cur:
        joined.append(cur)
    commands = []
    for line in joined:
        try:
            lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
            lex.whitespace_split = True
            lex.commenters = "#"
            tokens = list(lex)
        except ValueError:
            continue
        cmd = []
        for t in tokens:
            if t and set(t) <= set(";&|()"):
                if cmd:
                    commands.append(cmd)
                cmd = []
            else:
                cmd.append(t)
        if cmd:
            commands.append(cmd)
    return commands


class Cli:
    def __init__(self, binary):
        self.binary = binary
        self.cache = {}

    def help(self, path):
        key = tuple(path)
        if key not in self.cache:
            r = subprocess.run([self.binary, *path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if r.returncode != 0:
                self.cache[key] = None
            else:
                flags, subs, in_subs = set(), set(), False
                for line in r.stdout.split("\n"):
                    if re.match(r"^\S.*:\s*$", line):
                        in_subs = line.startswith("Subcommands")
                        continue
                    if in_subs:
                        m = re.match(r"^\s+([a-z][\w-]*)\s", line + " ")
                        if m:
                            subs.add(m.group(1))
                    m = re.match(r"^\s+(?:-\w,)?(--[A-Za-z0-9][\w-]*)", line)
                    if m:
                        flags.add(m.group(1))
                self.cache[key] = (flags, subs)
        return self.cache[key]


def check_flags(page, cli, problems, counted):
    rel = os.path.relpath(page, ROOT)
    _, blocks = split_blocks(open(page, encoding="utf-8").read())
    for info, lines in blocks:
        if info and info.split()[0] not in ("sh", "bash", "shell", "console"):
            continue
        for cmd in shell_commands(lines):
            for i, tok in enumerate(cmd):
                if not re.search(r"(^|/)fivefold$", tok):
                    continue
                path, j = [], i + 1
                top = cli.help([])
                if top is None:
                    problems.append("%s --help failed" % cli.binary)
                    return
                subs = top[1]
                while j < len(cmd) and cmd[j] in subs:
                    path.append(cmd[j])
                    h = cli.help(path)
                    subs = h[1] if h else set()
                    j += 1
                h = cli.help(path)
                name = " ".join(["fivefold"] + path)
                if j < len(cmd) and re.match(r"^[a-z][\w-]*$", cmd[j]) and h is not None and h[1]:
                    problems.append("%s: `%s` has no subcommand %s" % (rel, name, cmd[j]))
                    break
                if h is None:
                    problems.append("%s: `%s --help` fails" % (rel, name))
                    break
                for t in cmd[j:]:
                    if t.startswith("--") and len(t) > 2:
                        flag = t.split("=", 1)[0]
                        counted[0] += 1
                        if flag not in h[0]:
                            problems.append("%s: `%s` has no flag %s (in: %s)" % (rel, name, flag, " ".join(cmd[i:])[:160]))
                break


def main():
    problems = []
    all_pages = pages()
    for p in all_pages:
        check_links(p, problems)
    counted = [0]
    if len(sys.argv) > 1:
        cli = Cli(sys.argv[1])
        for p in all_pages:
            check_flags(p, cli, problems, counted)
    for p in problems:
        print("FAIL", p)
    print("%d pages, %d flags in code blocks checked against --help%s: %d problem(s)"
          % (len(all_pages), counted[0], "" if len(sys.argv) > 1 else " (no binary given: skipped)", len(problems)))
    # The checker itself: a broken link, an escaping link and an unknown anchor must be found.
    assert slug("Choosing a layout with `fivefold plan`") == "choosing-a-layout-with-fivefold-plan"
    assert slug("Starting from a pretrained model: SFT with LoRA (issue 11)") == \
        "starting-from-a-pretrained-model-sft-with-lora-issue-11"
    cmds = shell_commands(["a --x && ./build/fivefold train \\", "  --steps 2 # --comment", "cat <<'EOF'",
                           "--not-a-flag", "EOF"])
    assert [c[0] for c in cmds] == ["a", "./build/fivefold", "cat"], cmds
    assert cmds[1] == ["./build/fivefold", "train", "--steps", "2"], cmds
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
