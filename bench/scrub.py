"""Scrubbing time: the scrubber's radix-tree regex against the plain alternation of the same spellings (longest first,
what it replaced), in the same run, on the same text.

Each process registers every secret it resolves, in about 15 spellings each (URL-quoted, JSON, HTML, base64 ...),
and scrubs every output, log line and file it writes with all of them: a production run holds a few dozen
secrets, a test worker a few hundred by its end.  For each number of secrets the bench scrubs a text of --mb MB
(base64, the worst case: every character may start a secret) with a few secrets planted, checks both give the
same result, and prints the times and the ratio trie/alternation.

Then the arrival of secrets: a step registers them one at a time with a scrub between each (a certificate's key
issued, the next command's output scrubbed).  For the same numbers of secrets (a dozen PEM-sized keys among them)
it times the scrubber as it is (generations: a new secret compiles only its own spellings, merged when one is half
the size of the one before) against one regex of every spelling compiled again after each secret (the scrubber
before), checks both scrub alike, and prints the ratio generations/one regex.  Needs nothing but the virtualenv:

    .venv/bin/python bench/scrub.py [--secrets 10,50,200] [--mb 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table  # noqa: E402

from hcbpg.secrets import REDACTED, Scrubber, _alternation_pattern, _scrub_pattern  # noqa: E402


def timed(pattern: re.Pattern[str], text: str, rounds: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = pattern.sub(REDACTED, text)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secrets", default="10,50,200", help="numbers of secrets, comma-separated")
    ap.add_argument("--mb", type=float, default=2.0, help="the text's size in MB")
    ap.add_argument("--rounds", type=int, default=3, help="median of this many scrubs each")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.secrets.split(",")):
        scrubber = Scrubber()
        planted = [secrets.token_urlsafe(24) for _ in range(n)]
        scrubber.add_many(planted)
        values = set(scrubber.spellings)
        noise = base64.b64encode(secrets.token_bytes(int(args.mb * 1024 * 1024 * 3 / 4))).decode()
        step = max(1, len(noise) // 8)
        text = "".join(noise[i:i + step] + " " + planted[i // step % n] + " " for i in range(0, len(noise), step))
        t0 = time.perf_counter()
        trie = _scrub_pattern(values)
        compile_trie = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = _alternation_pattern(values)  # the baseline: the scrubber's regex before the radix tree
        compile_plain = time.perf_counter() - t0
        trie_s, trie_out = timed(trie, text, args.rounds)
        plain_s, plain_out = timed(plain, text, args.rounds)
        if trie_out != plain_out or any(p in trie_out for p in planted):
            print(f"{n} secrets: the trie and the alternation differ, or a planted secret is left", file=sys.stderr)
            return 1
        rows.append({"secrets": n, "spellings": len(values), "MB": round(len(text) / 2 ** 20, 1),
                     "alternation s": f"{plain_s:.3f}", "trie s": f"{trie_s:.3f}",
                     "compile s (alt/trie)": f"{compile_plain:.3f}/{compile_trie:.3f}",
                     "trie/alternation": f"{trie_s / plain_s:.3f}"})
    print_table(rows, ["secrets", "spellings", "MB", "alternation s", "trie s", "compile s (alt/trie)",
                       "trie/alternation"])
    print()
    rows = []
    for n in (int(x) for x in args.secrets.split(",")):
        arrivals = [secrets.token_urlsafe(24) for _ in range(n - min(12, n // 2))]
        arrivals += ["-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(secrets.token_bytes(180)).decode()
                     + "\n-----END PRIVATE KEY-----\n" for _ in range(min(12, n // 2))]
        outputs = [f"line {i} of a command's output\n" * 20 for i in range(n)]
        t0 = time.perf_counter()
        scrubber = Scrubber()
        ours = []
        for value, output in zip(arrivals, outputs, strict=True):
            scrubber.add(value)
            ours.append(scrubber.scrub(output + value))
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        before = Scrubber()  # the baseline: every spelling compiled again into one regex after each secret
        theirs = []
        for value, output in zip(arrivals, outputs, strict=True):
            before.add(value)
            theirs.append(_scrub_pattern(before.spellings).sub(REDACTED, output + value))
        before_s = time.perf_counter() - t0
        if ours != theirs or any(v in o for v, o in zip(arrivals, ours, strict=True)):
            print(f"{n} secrets arriving: the generations and the one regex differ, or a secret is left",
                  file=sys.stderr)
            return 1
        rows.append({"secrets arriving": n, "spellings": len(scrubber), "one regex s": f"{before_s:.3f}",
                     "generations s": f"{ours_s:.3f}", "generations/one regex": f"{ours_s / before_s:.3f}"})
    print_table(rows, ["secrets arriving", "spellings", "one regex s", "generations s", "generations/one regex"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
