"""Network helpers of ``pushproxy test-connection``: DNS, TCP, StartTLS, TLS, certificates,
and the words that explain a failed HTTP request.

The raw exchange lets each step fail on its own line with its own cause,
where ldap3 would fold DNS, TCP and TLS errors into one exception.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import socket
import ssl

from cryptography import x509

from pushproxy.config import LdapConfig
from pushproxy.ldaptls import client_context
from pushproxy.tlsnames import names_of


# The StartTLS extended request (RFC 4511 4.14.1), message id 1, BER-encoded by
# hand: the raw exchange lets the TLS step report the handshake and the
# certificate separately, which ldap3's start_tls() folds into one error.
_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"


_STARTTLS_REQUEST = (b"\x30" + bytes([5 + 2 + len(_STARTTLS_OID)]) + b"\x02\x01\x01"
                     + b"\x77" + bytes([2 + len(_STARTTLS_OID)])
                     + b"\x80" + bytes([len(_STARTTLS_OID)]) + _STARTTLS_OID)


def resolve(host: str, port: int) -> tuple[list[tuple], str]:
    """The addresses to try for host:port, and a description; raises socket.gaierror."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen, addrs = set(), []
    for family, _, _, _, sockaddr in infos:
        if sockaddr[:2] not in seen:
            seen.add(sockaddr[:2])
            addrs.append((family, sockaddr))
    shown = ", ".join(a[1][0] for a in addrs)
    return addrs, shown


def dns_problem(host: str, exc: socket.gaierror) -> str:
    """Why a name does not resolve, in the words an administrator needs."""
    code = exc.args[0] if exc.args else None
    if code == socket.EAI_NONAME:
        return (f"{host} does not resolve (no such name): check the spelling in ldap.servers "
                "and this host's DNS servers (/etc/resolv.conf)")
    if code == socket.EAI_AGAIN:
        return ("temporary DNS failure: the DNS server did not answer; check /etc/resolv.conf "
                "and that the DNS server is reachable from here")
    if code == getattr(socket, "EAI_NODATA", object()):
        return f"{host} exists in DNS but has no address (A/AAAA) record"
    return f"{host} does not resolve: {exc}"


def address(sockaddr: tuple) -> str:
    """host:port, with IPv6 addresses in brackets."""
    host, port = sockaddr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_problem(exc: OSError, timeout: float) -> str:
    """Tell refused, timed out and unreachable apart: each points at a different culprit."""
    if isinstance(exc, ConnectionRefusedError):
        return ("connection refused: nothing listens on that port (server down, wrong port) "
                "or a firewall rejects the connection")
    if isinstance(exc, TimeoutError):
        return (f"no answer within {timeout:g} s (ldap.connect_timeout): a firewall silently "
                "drops the packets, or the host is down")
    if exc.errno == errno.ENETUNREACH:
        return ("network unreachable: this host has no route to that address (routing, VPN, "
                "or IPv6 without a route)")
    if exc.errno == errno.EHOSTUNREACH:
        return ("host unreachable: nothing answers at that address (host down, or a firewall "
                "rejects with ICMP host-unreachable)")
    return exc.strerror or str(exc)


def tcp_connect(addrs: list[tuple], timeout: float) -> tuple[socket.socket | None, list[str]]:
    """Connect to the first address that accepts, as ldap3 tries them in order."""
    problems = []
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock, problems
        except OSError as exc:
            sock.close()
            problems.append(f"{address(sockaddr)}: {_connect_problem(exc, timeout)}")
    return None, problems


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or EOFError when the server closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the server closed the connection")
        data += chunk
    return data


def _ber_length(sock: socket.socket) -> int:
    """Read a BER length (short or long form) from the socket."""
    first = _recv_exact(sock, 1)[0]
    if first < 0x80:
        return first
    count = first & 0x7F
    if not 1 <= count <= 4:
        raise ValueError("not an LDAP message")
    return int.from_bytes(_recv_exact(sock, count), "big")


def _ber_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) elements at one level of a BER encoding."""
    items, i = [], 0
    while i < len(data):
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[i:i + count], "big")
            i += count
        items.append((tag, data[i:i + length]))
        i += length
    return items


def start_tls(sock: socket.socket) -> tuple[int, str]:
    """Ask for StartTLS on a plain connection; (LDAP result code, server's message)."""
    sock.sendall(_STARTTLS_REQUEST)
    if _recv_exact(sock, 1) != b"\x30":
        raise ValueError("the answer is not an LDAP message")
    body = _recv_exact(sock, _ber_length(sock))
    for tag, value in _ber_items(body):
        if tag == 0x78:  # [APPLICATION 24] ExtendedResponse
            parts = _ber_items(value)
            code = int.from_bytes(parts[0][1], "big") if parts and parts[0][0] == 0x0A else 80
            message = parts[2][1].decode("utf-8", "replace") if len(parts) > 2 else ""
            return code, message
    raise ValueError("the answer is not an extended response")


def tls_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """The daemon's trust settings (CA file or system store); the name is `hostname_problem`'s."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The chain first, the name in a step of its own: "untrusted" and "wrong
    # name" point at different fixes.
    ctx.check_hostname = False
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


def verify_problem(exc: ssl.SSLCertVerificationError, ca_file: str | None) -> str:
    """Why certificate verification failed, and what to change."""
    code = exc.verify_code
    if code in (18, 19, 20, 21, 2):  # self-signed, unknown issuer, unverifiable chain
        if ca_file:
            return (f"certificate not trusted ({exc.verify_message}): it is not signed by the CA "
                    f"in ldap.ca_file ({ca_file}); wrong CA file, or the directory's "
                    "certificate was renewed by another CA")
        return (f"certificate not trusted ({exc.verify_message}): it is not signed by a CA in "
                "the system trust store; set ldap.ca_file to the CA certificate (PEM) that "
                "signed the directory's certificate")
    if code == 10:
        return "certificate has expired: renew it on the directory server"
    if code == 9:
        return ("certificate is not valid yet: check this host's clock (timedatectl) and the "
                "certificate's start date")
    return f"certificate verification failed: {exc.verify_message or exc}"


def handshake_problem(exc: Exception, timeout: float) -> str:
    """Why a TLS handshake failed (other than an untrusted certificate)."""
    if isinstance(exc, TimeoutError):
        return (f"no TLS answer within {timeout:g} s (ldap.response_timeout): the port accepts "
                "connections but does not speak TLS, or the server hangs")
    reason = getattr(exc, "reason", None) or ""
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                  "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
        return (f"TLS handshake failed ({reason}): the server does not speak TLS on this port "
                "(a plain ldap:// port, 389, written as ldaps://?)")
    if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION"):
        return (f"TLS handshake failed ({reason}): no TLS version in common; the server only "
                "offers versions this host disables (TLS 1.0/1.1)")
    if reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER"):
        return (f"TLS handshake failed ({reason}): no cipher suite in common, or the server "
                "demands a client certificate")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, EOFError)):
        return ("the server closed the connection during the TLS handshake: it may not speak "
                "TLS on this port, or it refuses this host's TLS versions or ciphers")
    return f"TLS handshake failed: {exc}"


def describe_certificate(der: bytes) -> tuple[str, datetime.datetime]:
    """One line about a DER certificate (subject, names, issuer, expiry) and its expiry time."""
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    names = ", ".join(names_of(cert)) or "none (no subjectAltName)"
    text = (f"subject {cert.subject.rfc4514_string()}; names {names}; issued by "
            f"{cert.issuer.rfc4514_string()}; valid until {not_after:%Y-%m-%d %H:%M} UTC")
    return text, not_after


def peek_certificate(addrs: list[tuple], cfg: LdapConfig) -> str | None:
    """What the server presents, fetched without verification, to explain a failed verify."""
    sock, _ = tcp_connect(addrs, cfg.connect_timeout)
    if sock is None:
        return None
    try:
        sock.settimeout(cfg.response_timeout)
        if cfg.start_tls and start_tls(sock)[0] != 0:
            return None
        with tls_context(None, verify=False).wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
        return describe_certificate(der)[0] if der else None
    except (OSError, ValueError, EOFError):
        return None
    finally:
        sock.close()


# OpenSSL's verify codes for a certificate that is trusted but names another host.
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def hostname_problem(addrs: list[tuple], cfg: LdapConfig, host: str, der: bytes) -> str | None:
    """None when the certificate names ``host`` by the daemon's rule, else what it names.

    The verdict is a real handshake on a new connection with the context the
    ldap3 paths use (`pushproxy.ldaptls`: Python's ssl checks the name), so
    this step can never say OK to a name those connections refuse, or the
    reverse, whatever the Python version. ``der``: the certificate the first
    handshake saw, to say what it names.
    """
    sock, problems = tcp_connect(addrs, cfg.connect_timeout)
    if sock is None:
        return f"could not connect again for the name check: {'; '.join(problems)}"
    try:
        sock.settimeout(cfg.response_timeout)
        if cfg.start_tls:
            code, _ = start_tls(sock)
            if code != 0:
                return f"the server refused StartTLS on the second connection ({code})"
        with client_context(cfg.ca_file).wrap_socket(sock, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code not in _NAME_MISMATCH:
            return f"certificate verification failed: {exc.verify_message or exc}"
    except (OSError, ValueError, EOFError) as exc:
        return f"the name check could not complete: {type(exc).__name__}: {exc}"
    finally:
        sock.close()
    return _mismatch(x509.load_der_x509_certificate(der), host)


def _mismatch(cert: x509.Certificate, host: str) -> str:
    """What a certificate that does not name ``host`` names instead, and why it does not count."""
    names = ", ".join(names_of(cert)) or f"only {cert.subject.rfc4514_string()}"
    try:
        ipaddress.ip_address(host)
        hint = " (an IP address matches only an IP: entry)"
    except ValueError:
        dns = [n[4:] for n in names_of(cert) if n.startswith("DNS:")]
        if any("*" in n and not n.startswith("*.") for n in dns):
            hint = (" (a wildcard counts only as the whole leftmost label, *.example.com; "
                    "a partial one such as w*.example.com matches nothing)")
        elif not dns:
            hint = " (the subject's CN is not checked: the name must be a DNS: entry)"
        else:
            hint = ""
    return (f"the certificate does not name {host}{hint}; it names {names}: use one of "
            f"those names in ldap.servers, or have the certificate reissued for {host}")


def innermost(exc: BaseException) -> BaseException:
    """The real error inside a requests exception.

    requests wraps urllib3's MaxRetryError, which wraps the real error in
    ``reason``; printing the outer one buries it under "Max retries exceeded".
    """
    inner = exc
    for _ in range(6):
        nested = getattr(inner.args[0], "reason", None) if inner.args else None
        if isinstance(nested, BaseException):
            inner = nested
        elif inner.args and isinstance(inner.args[0], BaseException):
            inner = inner.args[0]
        else:
            break
    return inner


def short(exc: Exception) -> str:
    """The innermost useful words of a requests/urllib3 exception chain."""
    inner = innermost(exc)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {inner.verify_message}"
    text = str(inner)
    return text if len(text) <= 300 else text[:297] + "..."


def system_trust() -> str | bool:
    """The system's CA bundle, as phones trust public CAs rather than requests' certifi."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile
    if paths.capath and os.path.isdir(paths.capath):
        return paths.capath
    return True  # no system store found: requests' own bundle
