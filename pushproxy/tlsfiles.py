"""Load the certificate, key and CA files of a config the way `serve` does, at config time.

`serve` used to read them only when a listener started (or, for a CA file,
at the first connection to the directory), so `check-config` said OK for a
placeholder certificate that `serve` then refused. The checks here run while
the config is validated, so `check-config`, `serve` and a reload all refuse
the same files with the same words, next to every other problem.

Each function returns problems as ``(config path, message)`` pairs.
"""

from __future__ import annotations

import ssl as stdlib_ssl

MARKER = b"-----END CERTIFICATE-----"


def _read(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"


def _certificates(pem: bytes, path: str) -> str | None:
    """None if ``pem`` holds PEM certificates that all parse, else the problem."""
    from twisted.internet import ssl

    blocks = [block + MARKER for block in pem.split(MARKER)
              if b"-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        return f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    for i, block in enumerate(blocks):
        try:
            ssl.Certificate.loadPEM(block)
        except Exception as exc:  # pyOpenSSL's errors are tuples of OpenSSL reasons
            return f"{path}: certificate {i + 1} cannot be parsed ({_reason(exc)})"
    return None


def _reason(exc: Exception) -> str:
    """A short reason from an OpenSSL/pyOpenSSL error."""
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def server_pair(cert_path: str, key_path: str, where: str) -> list[tuple[str, str]]:
    """A server certificate (its chain may follow) and the private key that matches it."""
    problems = []
    cert = _read(cert_path)
    key = _read(key_path)
    if isinstance(cert, str):
        problems.append((f"{where}.tls_cert", cert))
    elif (problem := _certificates(cert, cert_path)) is not None:
        problems.append((f"{where}.tls_cert", problem))
    if isinstance(key, str):
        problems.append((f"{where}.tls_key", key))
    elif b"PRIVATE KEY-----" not in key:
        problems.append((f"{where}.tls_key", f"{key_path} holds no PEM private key "
                                             "(-----BEGIN PRIVATE KEY-----)"))
    elif b"ENCRYPTED" in key:
        problems.append((f"{where}.tls_key", f"{key_path} is encrypted with a passphrase; "
                                             "the daemon cannot type it: store it without "
                                             "one (openssl pkey -in KEY -out KEY.plain), "
                                             "mode 0600"))
    if problems:
        return problems
    context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback keeps OpenSSL from prompting on a terminal.
        context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except stdlib_ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            return [(f"{where}.tls_key", f"{key_path} is not the private key of the "
                                         f"certificate in {cert_path}")]
        return [(f"{where}.tls_key", f"{key_path} cannot be loaded with {cert_path} "
                                     f"({_reason(exc)})")]
    except OSError as exc:
        return [(f"{where}.tls_key", f"cannot load {key_path}: {exc}")]
    return []


def ca_bundle(path: str, where: str) -> list[tuple[str, str]]:
    """A CA file: PEM certificates both the daemon's TLS stacks accept."""
    pem = _read(path)
    if isinstance(pem, str):
        return [(where, pem)]
    problem = _certificates(pem, path)
    if problem is not None:
        return [(where, problem)]
    try:  # ldap3 (the primary's binds) loads it into an ssl.SSLContext
        stdlib_ssl.create_default_context(cafile=path)
    except (stdlib_ssl.SSLError, OSError) as exc:
        return [(where, f"{path} cannot be used as a CA file ({_reason(exc)})")]
    return []
