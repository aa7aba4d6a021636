"""The config loader fuzz target: mutated YAML into `parse_config`.

The only allowed outcomes are a `Config` or a `ConfigError` whose problems are
non-empty strings; any other exception (a TypeError on a value of the wrong
type, a RecursionError on deep nesting, an OverflowError on a huge number) is
a finding. Inputs start from ``config.example.yaml``, so mutations land on
real keys; relative secret files resolve against the repository, as
``check-config config.example.yaml`` does.
"""

from __future__ import annotations

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
    return config


def lines() -> list[str]:
    """The example config's lines (mutation points)."""
    return EXAMPLE.splitlines()
