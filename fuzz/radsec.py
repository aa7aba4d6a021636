"""A long mutation run of the RadSec fuzz target (no extra dependency).

    python -m fuzz.radsec --runs 1000000 [--seed 1]

Each input is a seed stream from `fuzz.radsec_target.seeds` with a few random
edits (octets, Length fields, cuts, inserted junk) or pure noise, fed through
`fuzz.radsec_target.run_one` and its oracle. A violation stops the run and
writes the input to ``crash-radsec-<n>.bin``. Counts are printed every
100,000 inputs and at the end.
"""

from __future__ import annotations

import argparse
import logging
import random
import struct
import sys
import time

from fuzz import radsec_target


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One input: a mutated seed, or (one in ten) random noise."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(1, 600))
    buf = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        if len(buf) < 3:
            break
        pos = rng.randint(1, len(buf) - 1)
        op = rng.randrange(5)
        if op == 0:
            buf[pos] = rng.randrange(256)
        elif op == 1:
            del buf[pos]
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and len(buf) > pos + 4:
            buf[pos + 2:pos + 4] = struct.pack("!H", rng.choice((0, 19, 20, 21, 4096, 4097,
                                                                 65535, rng.randrange(65536))))
        else:
            del buf[pos:]
    return bytes(buf)


def main(argv=None) -> int:
    """Run; 0 when the oracle held for every input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the engine logs every decision
    rng = random.Random(args.seed)
    seeds = radsec_target.seeds()
    stats = {"inputs": 0, "accepts": 0, "rejects": 0, "closed": 0, "answered": 0}
    start = time.monotonic()
    for n in range(1, args.runs + 1):
        data = mutate(rng, seeds)
        try:
            outcome = radsec_target.run_one(data)
        except BaseException:
            path = f"crash-radsec-{n}.bin"
            with open(path, "wb") as f:
                f.write(data)
            print(f"oracle failure at input {n}, saved to {path}", file=sys.stderr)
            raise
        stats["inputs"] += 1
        stats["accepts"] += outcome.codes.count(2)
        stats["rejects"] += outcome.codes.count(3)
        stats["closed"] += outcome.aborted
        stats["answered"] += bool(outcome.codes)
        if n % 100_000 == 0 or n == args.runs:
            print(f"{stats} elapsed_s={time.monotonic() - start:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
