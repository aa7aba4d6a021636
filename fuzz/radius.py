"""Coverage-guided fuzzing of the RADIUS front end with atheris (libFuzzer).

    pip install atheris          # or: pip install '.[fuzz]'
    python -m fuzz.radius -atheris_runs=1000000

Every input goes through `fuzz.radius_target.run_one`: the whole
`RadiusProtocol.datagramReceived` path with a scripted directory, checked by an
independent oracle (no exception escapes, every reply is correctly signed with
Message-Authenticator first, nothing answers an unknown source or a badly
signed request, no Access-Accept for anything but a valid login), and for the
``primary: radius`` client `fuzz.upstream_target.run`: both legs, the
upstream played in-process with a Clock (forwarded requests signed for the
upstream, only verified upstream replies used, Accept only after a verified
upstream Accept and an approved push, MPPE keys re-encrypted). A violation
raises, and libFuzzer stops and saves the input as ``crash-*``.

Without a corpus folder on the command line the run starts from the valid
packets of `fuzz.radius_target.seeds` and `fuzz.upstream_target.seeds` in a
fresh temporary folder. Counts (inputs, replies, accepts, drops; forwarded
requests, upstream replies verified and refused) are printed every 100,000 inputs and at the
end, and written to ``fuzz-radius-stats.json`` (``FUZZ_STATS`` overrides the path).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time

import atheris

with atheris.instrument_imports(include=["pushproxy", "pyrad"]):
    from fuzz import radius_target, upstream_target
    from pyrad import packet as rpacket

STATS = {"inputs": 0, "answered": 0, "accepts": 0, "rejects": 0, "challenges": 0,
         "dropped": 0, "oracle_failures": 0, "exceptions": 0,
         # primary: radius (fuzz/upstream_target.py): inputs from that client,
         # requests forwarded upstream, upstream replies taken / dropped.
         "upstream_inputs": 0, "forwarded": 0, "upstream_verified": 0,
         "upstream_refused": 0, "upstream_accepts": 0}
_START = time.monotonic()
_TARGET = None


def _report(final: bool = False) -> None:
    STATS["elapsed_s"] = round(time.monotonic() - _START, 1)
    line = json.dumps(STATS, sort_keys=True)
    print(f"radius-fuzz {'final' if final else 'progress'}: {line}", file=sys.stderr, flush=True)
    with open(os.environ.get("FUZZ_STATS", "fuzz-radius-stats.json"), "w") as f:
        f.write(line + "\n")


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: one control octet + datagram through the oracle."""
    STATS["inputs"] += 1
    try:
        outcome = radius_target.run_one(data)
    except radius_target.OracleFailure:
        STATS["oracle_failures"] += 1
        _report(final=True)
        raise
    except Exception:
        STATS["exceptions"] += 1
        _report(final=True)
        raise
    if data and (data[0] & 0x0F) % len(radius_target.SOURCES) == radius_target.UPSTREAM_SOURCE:
        STATS["upstream_inputs"] += 1
        STATS["forwarded"] += outcome.forwarded
        STATS["upstream_verified"] += outcome.upstream_verified
        STATS["upstream_refused"] += outcome.upstream_refused
        STATS["upstream_accepts"] += bool(outcome.codes) and outcome.codes[0] == \
            rpacket.AccessAccept
    if outcome.codes:
        STATS["answered"] += 1
        first = outcome.codes[0]
        key = {rpacket.AccessAccept: "accepts", rpacket.AccessReject: "rejects",
               rpacket.AccessChallenge: "challenges"}[first]
        STATS[key] += 1
    else:
        STATS["dropped"] += 1
    if STATS["inputs"] % 100_000 == 0 or STATS["inputs"] == _TARGET:
        _report(final=STATS["inputs"] == _TARGET)


def main(argv: list[str]) -> None:
    """Run libFuzzer with the seed corpus unless a corpus folder is given."""
    global _TARGET
    logging.disable(logging.CRITICAL)  # drops are logged; a fuzzer makes millions of them
    for arg in argv:
        if arg.startswith(("-atheris_runs=", "-runs=")):
            _TARGET = int(arg.split("=", 1)[1])
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = tempfile.mkdtemp(prefix="radius-corpus-")
        for i, seed in enumerate(radius_target.seeds() + upstream_target.seeds()):
            with open(os.path.join(corpus, f"seed-{i:02d}"), "wb") as f:
                f.write(seed)
        argv = argv + [corpus]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
