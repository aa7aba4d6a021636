"""The config loader fuzz target: mutated YAML into `parse_config`.

The only allowed outcomes are a `Config` without NaN anywhere in it, or a
`ConfigError` whose problems are non-empty strings; any other exception (a TypeError on a value of the wrong
type, a RecursionError on deep nesting, an OverflowError on a huge number) is
a finding. Inputs start from ``config.example.yaml``, so mutations land on
real keys; relative secret files resolve against the repository, as
``check-config config.example.yaml`` does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pushproxy.config import Config, ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
ENV = {"PUSHPROXY_VPN_SECRET": "an-env-secret-of-length", "LDAP_BIND_PASSWORD": "pw"}


class OracleFailure(AssertionError):
    """The loader raised something other than ConfigError, or returned something else."""


def run_one(text: str) -> Config | ConfigError:
    """Parse ``text``; a Config or the ConfigError, or OracleFailure for anything else."""
    try:
        config = parse_config(text, base_dir=ROOT, env=ENV, source="<fuzz>")
    except ConfigError as exc:
        if not exc.problems or not all(isinstance(p, str) and p for p in exc.problems):
            raise OracleFailure(f"ConfigError without usable problems: {exc.problems!r}")
        return exc
    except Exception as exc:
        raise OracleFailure(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(config, Config):
        raise OracleFailure(f"parse_config returned {type(config).__name__}")
    for path, value in _leaves(config, "config"):
        if isinstance(value, float) and value != value:
            raise OracleFailure(f"{path} is NaN: a config value no comparison can bound")
    return config


def _leaves(value, path: str, depth: int = 0):
    """Every plain value inside a Config (dataclasses, tuples, dicts), with its path."""
    if depth > 12:
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}", depth + 1)
    elif isinstance(value, (list, tuple, frozenset, set)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}", depth + 1)
    else:
        yield path, value


def lines() -> list[str]:
    """The example config's lines (mutation points)."""
    return EXAMPLE.splitlines()
