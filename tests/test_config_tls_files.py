"""Certificates, keys and CA files are loaded while the config is validated (issue 17).

`serve` used to read them only when a listener started, so `check-config`
passed placeholder files that `serve` then refused. Every problem names the
config path and the file, next to the config's other problems.
"""

from __future__ import annotations

import datetime
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pushproxy.config import ConfigError, parse_config

PEM = serialization.Encoding.PEM


def key_and_cert(name="mfa.example.net"):
    """A fresh EC key and a self-signed certificate for it, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(PEM))


def write(tmp_path, name, data: bytes, mode=0o600):
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def config(tmp_path, approval_tls="", ldap_extra="", extra=""):
    text = textwrap.dedent("""\
        radius:
          clients: [{name: gw, address: 127.0.0.1, secret_env: GW}]
        ldap:
          servers: ["ldaps://dc1.example.com"]
          bind_dn: cn=svc,dc=example,dc=com
          bind_password_env: PW
          user_base: dc=example,dc=com
        %s
        approval:
          public_url: https://mfa.example.com
          database: ":memory:"
        %s
        %s
        """) % (textwrap.indent(ldap_extra, "  "), textwrap.indent(approval_tls, "  "), extra)
    return parse_config(text, base_dir=tmp_path, env={"GW": "a-long-enough-secret", "PW": "x"})


def problems(tmp_path, **kw):
    with pytest.raises(ConfigError) as exc:
        config(tmp_path, **kw)
    return exc.value.problems


def test_a_real_pair_and_ca_file_load(tmp_path):
    key, cert = key_and_cert()
    write(tmp_path, "tls.key", key)
    write(tmp_path, "tls.crt", cert, 0o644)
    write(tmp_path, "ca.pem", cert, 0o644)
    cfg = config(tmp_path, approval_tls="tls_cert: tls.crt\ntls_key: tls.key\n",
                 ldap_extra="ca_file: ca.pem\n")
    assert cfg.approval.tls_cert.endswith("tls.crt") and cfg.ldap.ca_file.endswith("ca.pem")


def test_placeholder_files_are_refused_with_the_path_all_at_once(tmp_path):
    write(tmp_path, "tls.crt", b"placeholder: put the PEM certificate here\n", 0o644)
    write(tmp_path, "tls.key", b"placeholder\n")
    write(tmp_path, "ca.pem", b"not a CA\n", 0o644)
    found = problems(tmp_path, approval_tls="tls_cert: tls.crt\ntls_key: tls.key\n",
                     ldap_extra="ca_file: ca.pem\nconnect_timeout: -1\n")
    text = "\n".join(found)
    assert f"approval.tls_cert: {tmp_path / 'tls.crt'} holds no PEM certificate" in text
    assert f"approval.tls_key: {tmp_path / 'tls.key'} holds no PEM private key" in text
    assert f"ldap.ca_file: {tmp_path / 'ca.pem'} holds no PEM certificate" in text
    assert "ldap.connect_timeout" in text  # the other problems come in the same list
    assert len(found) == 4


def test_a_key_that_does_not_belong_to_the_certificate_is_named(tmp_path):
    _, cert = key_and_cert()
    other_key, _ = key_and_cert()
    write(tmp_path, "tls.crt", cert, 0o644)
    write(tmp_path, "tls.key", other_key)
    found = problems(tmp_path, approval_tls="tls_cert: tls.crt\ntls_key: tls.key\n")
    assert found == [f"approval.tls_key: {tmp_path / 'tls.key'} is not the private key of "
                     f"the certificate in {tmp_path / 'tls.crt'} (line 13)"], found


def test_a_passphrase_protected_key_is_refused_without_prompting(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    _, cert = key_and_cert()
    write(tmp_path, "tls.crt", cert, 0o644)
    write(tmp_path, "tls.key", key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    found = problems(tmp_path, approval_tls="tls_cert: tls.crt\ntls_key: tls.key\n")
    assert len(found) == 1 and "encrypted with a passphrase" in found[0]


def test_ldap_front_certificate_is_checked_like_the_approval_one(tmp_path):
    write(tmp_path, "front.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                 b"-----END CERTIFICATE-----\n", 0o644)
    key, _ = key_and_cert()
    write(tmp_path, "front.key", key)
    found = problems(tmp_path, extra=textwrap.dedent("""\
        ldap_front:
          listen: ["127.0.0.1:3389"]
          tls_cert: front.crt
          tls_key: front.key
        """))
    assert len(found) == 1 and found[0].startswith(
        f"ldap_front.tls_cert: {tmp_path / 'front.crt'}: certificate 1 cannot be parsed"), found
