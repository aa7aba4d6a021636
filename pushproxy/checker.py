"""Small typed readers that collect config problems instead of stopping at the first.

Every reader takes the mapping, the key and the full dotted path, records a
problem with the YAML line when the value is wrong and returns a usable value
(the default, or None) so that checking goes on and the admin sees every
mistake in one run.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pushproxy.yamlsource import Document

_MISSING = object()


class Checker:
    """Collects problems while reading one config document."""

    def __init__(self, doc: Document, *, base_dir: Path, env):
        self.doc = doc
        self.base_dir = base_dir
        self.env = env
        self.problems: list[str] = []
        # (config path, file, kind) of every secret file and private key read, for the
        # permission check at start-up (pushproxy.filemodes).
        self.sensitive: list[tuple[str, str, str]] = []

    def problem(self, path: str, message: str) -> None:
        """Record one problem at ``path``, with its YAML line when known."""
        line = self.doc.line(path)
        where = f" (line {line})" if line else ""
        text = f"{path or '<top level>'}: {message}{where}"
        if text not in self.problems:  # a missing section is noticed by parent and child
            self.problems.append(text)

    def resolve(self, path: str) -> Path:
        """A path from the config, relative ones taken from the config's folder."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.base_dir / p

    def mapping(self, value, path: str, *, required=(), optional=(), secret_keys=()):
        """Check that ``value`` is a mapping with only the allowed keys."""
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "must be a mapping" if value is not None else "missing")
            return None
        allowed = set(required) | set(optional)
        for key in value:
            sub = f"{path}.{key}" if path else str(key)
            if key in secret_keys:
                self.problem(sub, f"inline secrets are not accepted; use {key}_file "
                                  f"or {key}_env")
            elif key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.problem(sub, f"unknown key (allowed here: {hint})")
        for key in required:
            if key not in value:
                self.problem(f"{path}.{key}" if path else key, "missing")
        return value

    def seq(self, m: dict, key: str, path: str, default, *, min_len: int = 0) -> list:
        """A list value; a missing key gives ``default`` (None: required)."""
        value = m.get(key, _MISSING)
        if value is _MISSING:
            if default is None:
                self.problem(path, "missing")
                return []
            return list(default)
        if not isinstance(value, list):
            self.problem(path, "must be a list")
            return []
        if len(value) < min_len:
            self.problem(path, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
        return value

    def string(self, m: dict, key: str, path: str, *, required: bool = True) -> str | None:
        """A non-empty string."""
        value = m.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.problem(path, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(path, "must be a non-empty string")
            return None
        return value

    def boolean(self, m: dict, key: str, path: str, default: bool) -> bool:
        """true or false (YAML booleans only, not 'yes' strings)."""
        value = m.get(key, default)
        if not isinstance(value, bool):
            self.problem(path, "must be true or false")
            return default
        return value

    def number(self, m: dict, key: str, path: str, default, *, minimum=None, maximum=None,
               integer: bool = False):
        """A number within bounds."""
        value = m.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.problem(path, "must be a whole number" if integer else "must be a number")
            return default
        if value != value:  # .nan passes every comparison below (found by tests/fuzz)
            self.problem(path, "must be a number, not .nan")
            return default
        if minimum is not None and value < minimum:
            self.problem(path, f"must be at least {minimum}")
            return default
        if maximum is not None and value > maximum:
            self.problem(path, f"must be at most {maximum}")
            return default
        return value

    def choice(self, m: dict, key: str, path: str, choices, default: str) -> str:
        """One of a fixed set of strings."""
        value = m.get(key, default)
        if value not in choices:
            self.problem(path, f"must be one of {', '.join(choices)} (got {value!r})")
            return default
        return value

    def host_port(self, value, path: str) -> tuple[str, int] | None:
        """``host:port`` or ``[v6]:port``, host being a literal address."""
        if not isinstance(value, str) or ":" not in value:
            self.problem(path, "must be ADDRESS:PORT, e.g. 0.0.0.0:1812 or [::]:1812")
            return None
        host, _, port = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            self.problem(path, f"{value!r} is not ADDRESS:PORT with a literal IP address")
            return None
        if not 0 <= number <= 65535:
            self.problem(path, f"port {number} is out of range")
            return None
        return host, number

    def network(self, value, path: str):
        """An IP address or CIDR network (host bits must be zero)."""
        try:
            return ipaddress.ip_network(str(value), strict=True)
        except ValueError as exc:
            self.problem(path, f"not an IP address or network: {exc}")
            return None

    def readable_file(self, m: dict, key: str, path: str) -> str | None:
        """An optional path to a file that exists and can be read now."""
        value = self.string(m, key, path, required=False)
        if value is None:
            return None
        full = self.resolve(value)
        if not os.access(full, os.R_OK) or not full.is_file():
            self.problem(path, f"cannot read {full}")
            return None
        return str(full)

    def private_file(self, m: dict, key: str, path: str) -> str | None:
        """Like `readable_file`, for a private key: its mode is checked at start-up."""
        full = self.readable_file(m, key, path)
        if full is not None:
            self.sensitive.append((path, full, "private key"))
        return full

    def secret(self, m: dict, path: str, name: str, *, required: bool = True) -> str | None:
        """A secret from ``<name>_file`` or ``<name>_env``, never inline."""
        file_key, env_key = f"{name}_file", f"{name}_env"
        if file_key in m and env_key in m:
            self.problem(f"{path}.{name}", f"give {file_key} or {env_key}, not both")
            return None
        if file_key in m:
            where = f"{path}.{file_key}"
            raw = self.string(m, file_key, where)
            if raw is None:
                return None
            full = self.resolve(raw)
            self.sensitive.append((where, str(full), "secret"))
            try:
                value = full.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                self.problem(where, f"cannot read {full}: {getattr(exc, 'strerror', None) or exc}")
                return None
        elif env_key in m:
            where = f"{path}.{env_key}"
            var = self.string(m, env_key, where)
            if var is None:
                return None
            value = self.env.get(var)
            if value is None:
                self.problem(where, f"environment variable {var} is not set")
                return None
        else:
            if required:
                self.problem(f"{path}.{name}", f"missing (set {file_key} or {env_key})")
            return None
        if not value:
            self.problem(where, "the secret is empty")
            return None
        return value
