"""``python -m bench``: every scenario of issue 7 in one run, a table, and JSON.

    python -m bench                      # 3 runs, results in bench/results.json
    python -m bench --runs 5 --out /tmp/results.json
    python -m bench --smoke              # a few dozen logins: checks that it works
    python -m bench --only workers       # 1 and 2 workers, SQLite and PostgreSQL (issue 15)
    python -m bench --only upstream --only ldap-front   # beside their direct baselines

As root it installs what is missing (apt-get: freeradius, freeradius-ldap,
freeradius-utils, slapd, ldap-utils; pip: py-spy); ``--no-install`` never
does. Everything listens on 127.0.0.1 only, every process it starts is
stopped at the end, and nothing outside its temporary folder is written
except the JSON. See docs/benchmarks.md for the method and the results.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

from bench import deps
from bench import freeradius as fr_mod
from bench import profile as profiling
from bench.report import print_table, summarize
from bench import burst
from bench.scenarios import Bench, BenchFailure, Sizes


def machine() -> dict:
    """Facts about where the numbers were taken."""
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("pushproxy", "twisted", "pyrad", "ldap3", "cryptography", "pyasn1",
                 "prometheus-client"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    slapd = None
    try:
        out = subprocess.run(["/usr/sbin/slapd", "-VV"], capture_output=True, text=True,
                             timeout=10)
        text = out.stderr + out.stdout
        slapd = next((w for w in text.split() if w[:1].isdigit() and "." in w), None)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": _memory_gb(),
            "kernel": platform.release(), "python": platform.python_version(),
            "packages": versions, "freeradius": fr_mod.version(), "slapd": slapd,
            "loadavg_at_start": os.getloadavg()}


def _memory_gb() -> float | None:
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per scenario (median taken); 3")
    p.add_argument("--out", default=str(Path(__file__).parent / "results.json"),
                   help="where to write the JSON (default bench/results.json)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, one run, no profile: checks the benchmark works")
    p.add_argument("--no-install", action="store_true", help="never apt-get / pip install")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    p.add_argument("--skip-freeradius", action="store_true",
                   help="pushproxy only (no reference, no ratio)")
    p.add_argument("--only", action="append",
                   choices=("throughput", "pending", "overhead", "burst", "workers",
                            "pending-curve", "upstream", "ldap-front"),
                   help="run only these scenarios (repeatable); pending-curve: memory and "
                        "other logins' latency at --curve pending logins (issue 16); "
                        "upstream, ldap-front: the primary: radius path and the LDAP front "
                        "end beside FreeRADIUS and slapd directly (issue 16)")
    p.add_argument("--curve-baseline", metavar="REV", default=None,
                   help="pending-curve: run it first against git revision REV's daemon "
                        "(before/after in one run)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument("--slapd-loglevel", default="0",
                   help="slapd's -d level (default 0; 'stats' logs every operation with its "
                        "time, to see when the directory answered; it costs slapd CPU)")
    for field, default in asdict(Sizes()).items():
        text = f"size: {field} (default {default})"
        if field == "switch_interval":
            text = ("experiment: run the daemon under sys.setswitchinterval(N) "
                    "(default: Python's own, 5 ms)")
        p.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=None,
                       help=text)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes()
    overrides = {f: getattr(args, f) for f in asdict(sizes) if getattr(args, f) is not None}
    sizes = replace(sizes, **overrides)
    runs = 1 if args.smoke and args.runs == 3 else max(1, args.runs)
    only = set(args.only or ("throughput", "pending", "overhead", "burst"))
    if args.smoke and not args.only:
        # at tiny sizes: do the curve and the paths beside their baselines still work?
        only.update(("pending-curve", "upstream", "ldap-front"))
    want_profile = not (args.smoke or args.no_profile) and "throughput" in only

    def log(text):
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    missing = deps.ensure(install=not args.no_install, profile=want_profile, log=log)
    if "slapd" in missing:
        log("slapd is required: apt-get install slapd ldap-utils")
        return 2
    use_fr = not args.skip_freeradius and fr_mod.available()
    if not use_fr and not args.skip_freeradius:
        log("FreeRADIUS (freeradius, freeradius-ldap) not installed: pushproxy only")
    profile = want_profile and profiling.available()

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="pushproxy-bench-"))
    bench = Bench(workdir, sizes, use_freeradius=use_fr, log=log,
                  slapd_loglevel=args.slapd_loglevel)
    result = {"machine": machine(), "sizes": asdict(sizes), "runs_requested": runs,
              "freeradius_used": use_fr, "started": time.strftime(
                  "%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "runs": []}
    failure = None
    try:
        bench.start()
        for n in range(1, runs + 1):
            run: dict = {"run": n, "loadavg_at_start": os.getloadavg()}
            if "throughput" in only:
                if use_fr:
                    log(f"run {n}: throughput, FreeRADIUS")
                    run["freeradius"] = bench.throughput_freeradius()
                log(f"run {n}: throughput, pushproxy with push")
                run["pushproxy_push"] = bench.throughput_pushproxy(allow_all=False)
                log(f"run {n}: throughput, pushproxy policy allow (no push)")
                run["pushproxy_allow"] = bench.throughput_pushproxy(allow_all=True)
            if "pending" in only:
                log(f"run {n}: pending capacity ({sizes.pending} logins) and decision latency")
                run["pending"] = bench.pending()
            if "overhead" in only:
                log(f"run {n}: proxy overhead")
                run["overhead"] = bench.overhead()
            if "workers" in only:  # not in the default set: it starts PostgreSQL
                from bench import workers as workers_mod

                run["workers"] = workers_mod.run(bench, log=log)
                print(workers_mod.table(run["workers"]), flush=True)
            if "upstream" in only:
                from bench import upstream

                log(f"run {n}: upstream RADIUS path (primary: radius) beside FreeRADIUS")
                run["upstream"] = upstream.scenario(bench, log=log)
            if "ldap-front" in only:
                from bench import ldap_front

                log(f"run {n}: LDAP front end beside slapd directly")
                run["ldap_front"] = ldap_front.scenario(bench, log=log)
            if "pending-curve" in only:
                from bench import pendingcurve

                steps = pendingcurve.steps_of(sizes.curve, len(bench.pd))
                # push.timeout is at most 600 s: 100,000 held at once need a fill
                # of at least ~170 logins/s
                timeout = sizes.curve_timeout or min(600, round(60 + steps[-1] / 100))
                variants = [("this tree", None)]
                if args.curve_baseline:
                    source = pendingcurve.baseline_source(args.curve_baseline,
                                                          workdir / "baseline-src")
                    variants.insert(0, (f"baseline {args.curve_baseline}", source))
                run["pending_curve"] = []
                for label, source in variants:
                    log(f"run {n}: pending curve {steps}, {label}, push.timeout {timeout} s")
                    run["pending_curve"].append(pendingcurve.run(
                        bench, steps=steps, probes=sizes.curve_probes, timeout=timeout,
                        source=source, label=label))
                print(pendingcurve.table(run["pending_curve"]), flush=True)
            if "burst" in only:
                # The smoke's burst is small: tight bounds make it shed all the same.
                overload = {"ldap_queue": 40} if args.smoke else None
                for failmode in ("secure", "safe"):
                    log(f"run {n}: burst of {sizes.burst} logins at once, failmode {failmode}")
                    run[f"burst_{failmode}"] = burst.run(bench, failmode, overload)
            result["runs"].append(run)
            log(f"run {n} done")
        if profile:
            result["profile"] = {}
            for mode, gil in (("active_threads", False), ("gil", True)):
                log(f"profile: py-spy ({mode}) on the daemon during one more push "
                    "throughput run")
                raw = workdir / f"py-spy-push-{mode}.txt"
                run = bench.throughput_pushproxy(allow_all=False, profile_to=raw,
                                                 profile_gil=gil)
                kept = Path(args.out).with_name(f"profile-push-{mode}.raw.txt.gz")
                with open(raw, "rb") as src, gzip.open(kept, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                result["profile"][mode] = {"under_profiler": run, "raw_file": str(kept),
                                           **profiling.summarize(raw, top=30),
                                           "by_file": profiling.by_module(raw, top=25)}
    except BenchFailure as exc:
        bench.failures.append(str(exc))
    finally:
        bench.stop()
        if bench.failures:
            failure = "; ".join(bench.failures)
            result["failure"] = failure
        result["duration_s"] = round(time.time() - started, 1)
        result["machine"]["loadavg_at_end"] = os.getloadavg()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["summary"], result["targets"] = summarize(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    log(f"wrote {out}")
    if failure is not None:
        log(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
