"""The test directory's certificates pass strict X.509 verification (issue 17).

Python 3.13's default TLS context sets VERIFY_X509_STRICT, which refused the
fixture's CA (no KeyUsage), so the LDAPS tests failed there. The same flag on
any Python shows it here.
"""

from __future__ import annotations

import socket
import ssl


def test_ldaps_handshake_verifies_with_strict_x509_flags(slapd):
    context = ssl.create_default_context(cafile=slapd.ca_file)
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    with socket.create_connection(("127.0.0.1", slapd.ldaps_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
