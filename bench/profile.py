"""Where the daemon's time goes: py-spy samples folded into own and cumulative tables.

``py-spy record --format raw --threads`` writes one line per distinct stack:
``thread (TID): NAME;frame;frame;... COUNT`` with frames as ``func (file:line)``.
`summarize` folds those into, per function (file:function, lines merged):

- own: samples whose innermost Python frame is the function (native code it
  calls -- OpenSSL, sqlite3, the socket calls -- is counted here too, since
  py-spy was run without ``--native``);
- cumulative: samples with the function anywhere on the stack (once per sample);

and the share of samples per thread (the reactor, the LDAP pool, the store thread).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def available() -> bool:
    """Whether py-spy is installed."""
    return shutil.which("py-spy") is not None


def start(pid: int, out: Path, rate: int = 100, gil: bool = False) -> subprocess.Popen:
    """Start sampling ``pid`` into ``out`` (raw format, one stack per thread).

    Without ``gil``: every thread that is not idle, native calls included (a
    thread inside sqlite3 or OpenSSL counts, though it released the GIL).
    With ``gil``: only the thread holding the GIL -- what the one interpreter
    spends its time on, which bounds a GIL-bound daemon's throughput.
    """
    command = ["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", str(out), "--threads",
               "-r", str(rate), "--nonblocking"]
    if gil:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop sampling; py-spy writes its file on SIGINT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _short(path: str) -> str:
    """site-packages/twisted/web/http.py -> twisted/web/http.py; repo files relative."""
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", "lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.relpath(path) if os.path.isabs(path) else path


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first as 'file:function', count) per raw line."""
    stacks = []
    if str(path).endswith(".gz"):
        import gzip

        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        head, _, count = line.rpartition(" ")
        if not count.isdigit() or not head:
            continue
        parts = head.split(";")
        thread = parts[0]
        match = re.match(r"thread \(\w+\): ?(.*)", thread)
        name = match.group(1) if match else thread
        frames = []
        for frame in parts[1:]:
            m = _FRAME.match(frame)
            frames.append(f"{_short(m.group('file'))}:{m.group('func')}" if m else frame)
        stacks.append((name or "?", frames, int(count)))
    return stacks


def _thread_kind(name: str) -> str:
    if name == "MainThread":
        return "reactor (MainThread)"
    if name.startswith("PoolThread-ldap"):
        return "LDAP pool"
    if name.startswith("PoolThread-store"):
        return "store thread"
    if name.startswith("PoolThread-twisted.internet.reactor"):
        return "reactor thread pool"
    return name.split("-")[0] if name else "?"


def summarize(path: Path, top: int = 25) -> dict:
    """Own and cumulative shares per function, and the share per thread kind."""
    stacks = parse(path)
    total = sum(count for _, _, count in stacks) or 1
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[_thread_kind(thread)] += count
        if frames:
            own[frames[-1]] += count
        for func in set(frames):
            cumulative[func] += count

    def table(counter: Counter) -> list[dict]:
        return [{"function": f, "samples": n, "share": round(n / total, 4)}
                for f, n in counter.most_common(top)]

    return {"samples": total, "threads": table(threads), "own": table(own),
            "cumulative": table(cumulative)}


def by_module(path: Path, top: int = 20) -> list[dict]:
    """Own samples grouped by the innermost frame's file (which library burns the time)."""
    stacks = parse(path)
    total = sum(count for _, _, count in stacks) or 1
    files: Counter[str] = Counter()
    for _, frames, count in stacks:
        if frames:
            files[frames[-1].rsplit(":", 1)[0]] += count
    return [{"file": f, "samples": n, "share": round(n / total, 4)}
            for f, n in files.most_common(top)]
