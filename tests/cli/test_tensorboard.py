"""`fivefold train --tensorboard_dir` end to end: the event file is read back here with an
independent reader of TensorBoard's format (TFRecord framing with masked CRC32C, Event protos
decoded from the wire format), whose CRC-32C is checked on its standard test vector. Every record
must frame and checksum correctly, the first names the format, each step's scalars must be
metrics.jsonl's values as float32, and a cut or corrupted last record must cost only itself.

Usage: test_tensorboard.py FIVEFOLD. Exits non-zero on any failure.
"""
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

fivefold = sys.argv[1]
failures = []


def check(what, ok, detail=""):
    print("%-60s %s" % (what, "ok" if ok else "FAILED " + str(detail)[-800:]))
    if not ok:
        failures.append(what)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(data):
    """TFRecord framing: [length u64][masked crc32c of length][data][masked crc32c of data]. Reads
    until the end or the first record that is cut short or fails a checksum (as TensorBoard's
    reader stops there); returns the records before it and whether the whole file was good."""
    records, i = [], 0
    while i < len(data):
        if i + 12 > len(data):
            return records, False
        (n,) = struct.unpack_from("<Q", data, i)
        (lcrc,) = struct.unpack_from("<I", data, i + 8)
        if lcrc != masked(data[i:i + 8]) or i + 12 + n + 4 > len(data):
            return records, False
        rec = data[i + 12:i + 12 + n]
        (dcrc,) = struct.unpack_from("<I", data, i + 12 + n)
        if dcrc != masked(rec):
            return records, False
        records.append(rec)
        i += 12 + n + 4
    return records, True


def varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return v, i


def fields(b):  # (number, wire type, value) of a protobuf message
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wt)
        yield num, wt, v


check("crc32c('123456789') = 0xe3069283", crc32c(b"123456789") == 0xE3069283)
with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "corpus.txt"), "w") as f:
        for i in range(300):
            f.write("line %d: the quick brown fox jumps over the lazy dog.\n\n" % i)
    r = subprocess.run([fivefold, "train", "--data_path", os.path.join(tmp, "corpus.txt"), "--tokenizer_type", "byte",
                        "--vocab_size", "512", "--d_model", "32", "--num_layers", "2", "--num_heads", "4",
                        "--num_kv_heads", "2", "--num_experts", "4", "--moe_ffn_hidden", "16", "--seq_len", "32",
                        "--micro_batch", "2", "--steps", "6", "--eval_interval", "3", "--eval_samples", "4",
                        "--log_interval", "2", "--peak_tflops", "1", "--out_dir", os.path.join(tmp, "run"),
                        "--tensorboard_dir", os.path.join(tmp, "tb")], capture_output=True, text=True, timeout=300)
    check("train with --tensorboard_dir", r.returncode == 0, r.stdout + r.stderr)
    files = glob.glob(os.path.join(tmp, "tb", "events.out.tfevents.*"))
    check("one event file", len(files) == 1, files)
    data = open(files[0], "rb").read() if files else b""
    events, framing_ok = read_records(data)
    check("every record framed and checksummed", framing_ok and len(events) > 1)
    # A damaged tail (a run killed mid-write, a flipped bit) costs only its own record: the
    # records before it still frame and checksum, the bad one is refused.
    if len(events) > 2:
        last = len(data) - (12 + len(events[-1]) + 4)  # where the last record starts
        cut, cut_ok = read_records(data[:last + 12 + len(events[-1]) // 2])
        flipped = bytearray(data)
        flipped[last + 12] ^= 0x01
        bad, bad_ok = read_records(bytes(flipped))
        check("a cut or corrupted last record leaves the earlier ones",
              cut == events[:-1] and not cut_ok and bad == events[:-1] and not bad_ok,
              (len(cut), len(bad), len(events)))
    scalars = {}  # (step, tag) -> value
    version = None
    for e in events:
        step = 0
        for num, wt, v in fields(e):
            if num == 2:
                step = v
            elif num == 3:
                version = v.decode()
            elif num == 5:
                for snum, _, value in fields(v):
                    tag, val = None, None
                    for vnum, _, x in fields(value):
                        if vnum == 1:
                            tag = x.decode()
                        elif vnum == 2:
                            (val,) = struct.unpack("<f", x)
                    scalars[(step, tag)] = val
    check("the first record names the format", version == "brain.Event:2", version)
    recs = [json.loads(line) for line in open(os.path.join(tmp, "run", "metrics.jsonl"))] if r.returncode == 0 else []
    ok = len(recs) == 6
    for rec in recs:
        for key in ("loss", "lr", "grad_norm", "aux_loss", "tokens_per_s", "valid_loss"):
            if key not in rec:
                continue
            got = scalars.get((rec["step"], key))
            ok &= got is not None and got == struct.unpack("<f", struct.pack("<f", rec[key]))[0]
        if "expert_load_max_over_mean" in rec:
            ok &= (rec["step"], "expert_load_max_over_mean/0") in scalars
        for layer, shares in enumerate(rec.get("expert_load", [])):  # nested: expert_load/LAYER/EXPERT
            for e, share in enumerate(shares):
                got = scalars.get((rec["step"], "expert_load/%d/%d" % (layer, e)))
                ok &= got is not None and got == struct.unpack("<f", struct.pack("<f", share))[0]
        ok &= "expert_load" in rec
    check("each step's scalars are metrics.jsonl's (as float32)", ok, sorted(scalars)[:12])
    check("validation at steps 3 and 6 only", sorted(s for s, t in scalars if t == "valid_loss") == [3, 6],
          sorted(s for s, t in scalars if t == "valid_loss"))

print("%d failed" % len(failures))
sys.exit(1 if failures else 0)
