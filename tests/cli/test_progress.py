#!/usr/bin/env python3
"""Progress lines through the binary: on a terminal (a pseudo-terminal from Python's pty),
`fivefold preprocess` rewrites a progress line with an ETA in place; in a pipe (a log) it writes
none, only its summary line. A short training run with checkpoint saves writes no '\\r' to a
pipe either.

Usage: test_progress.py FIVEFOLD_BINARY
"""
import os
import pty
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(sys.argv[1])
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_pipe(args, cwd):
    r = subprocess.run(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert r.returncode == 0, (args, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))
    return r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def run_pty(args, cwd):
    """stdout and stderr on one pseudo-terminal; returns everything written to it."""
    master, slave = pty.openpty()
    p = subprocess.Popen(args, cwd=cwd, env=ENV, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed (Linux reports EIO)
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=600)
    os.close(master)
    assert p.returncode == 0, (args, out.decode(errors="replace"))
    return out.decode(errors="replace")


def write_corpus(path, mbytes):
    rng = random.Random(1)
    words = ["and", "the", "of", "unto", "lord", "said", "israel", "king", "land", "house", "people", "day"]
    with open(path, "w") as f:
        written = 0
        while written < mbytes * 1_000_000:
            para = " ".join(rng.choice(words) for _ in range(60)) + "\n\n"
            f.write(para)
            written += len(para)


def main():
    work = tempfile.mkdtemp(prefix="ff-progress-")
    try:
        write_corpus(os.path.join(work, "small.txt"), 1)
        run_pipe([BIN, "tokenizer", "train", "--input", "small.txt", "--vocab_size", "300", "--model_prefix", "sp",
                  "--threads", "1"], work)
        # Big enough that tokenising with one worker takes a few rewrite intervals (0.25 s each);
        # doubled until the piped run takes over a second, so a fast machine still shows a line.
        mb = 8
        while True:
            write_corpus(os.path.join(work, "big.txt"), mb)
            args = [BIN, "preprocess", "--input", "big.txt", "--output_prefix", "big", "--tokenizer_path", "sp.model",
                    "--workers", "1", "--chunk_bytes", "65536"]
            t0 = time.monotonic()
            out, err = run_pipe(args, work)
            if time.monotonic() - t0 > 1.0 or mb >= 128:
                break
            mb *= 2
        # In a pipe: the summary line, and no progress line.
        assert "\r" not in err and "\r" not in out, repr(err[-500:])
        assert "ETA" not in err, err
        summary = [l for l in err.splitlines() if l.startswith("preprocess: ") and "documents/s" in l]
        assert len(summary) == 1, err
        # On a terminal: progress lines rewritten in place, with their ETA, then the summary.
        tty = run_pty(args, work)
        progress = [s for s in tty.split("\r") if s.startswith("preprocess: ") and "ETA" in s]
        assert progress, repr(tty[-800:])
        assert " of " in progress[0] and "MB/s" in progress[0], progress[0]
        assert "documents/s" in tty, repr(tty[-300:])
        # The last progress line is blanked before the summary follows.
        assert "\r" + " " * len(progress[-1].rstrip()) in tty, repr(tty[-300:])
        # Training with checkpoint saves, in a pipe: no '\r' anywhere.
        out, err = run_pipe([BIN, "train", "--data_path", "small.txt", "--tokenizer_type", "byte", "--vocab_size", "512",
                             "--steps", "2", "--seq_len", "32", "--micro_batch", "2", "--eval_interval", "0",
                             "--eval_samples", "2", "--save_interval", "1", "--peak_tflops", "0.1", "--out_dir", "run"], work)
        assert "saved checkpoint" in out, out
        assert "\r" not in out and "\r" not in err, repr(err)
        print("progress: %d MB input, %d progress lines on a terminal, none in a pipe" % (mb, len(progress)))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
