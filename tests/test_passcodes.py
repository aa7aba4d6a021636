"""Passcodes: the password suffix, TOTP (RFC 6238 vectors), bypass codes."""

import base64
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from pushproxy import passcodes as pc
from pushproxy.passcodes import Credential, Factor, parse_password

# RFC 6238 Appendix B: the SHA1 secret is the ASCII "12345678901234567890"
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode("ascii")
RFC_VECTORS = [  # (Unix time, 8-digit TOTP)
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


# -- the password suffix


@pytest.mark.parametrize("raw, expected", [
    ("secret", Credential("secret", Factor.PUSH_DEFAULT)),
    ("secret,push", Credential("secret", Factor.PUSH_FORCED)),
    ("secret,PuSh", Credential("secret", Factor.PUSH_FORCED)),
    ("secret,123456", Credential("secret", Factor.PASSCODE, "123456")),
    ("secret,0123456789", Credential("secret", Factor.PASSCODE, "0123456789")),
    # the LAST delimiter: passwords may contain commas
    ("a,b,c,123456", Credential("a,b,c", Factor.PASSCODE, "123456")),
    ("a,b,push", Credential("a,b", Factor.PUSH_FORCED)),
    # not a suffix: the whole string is the password
    ("sec,ret", Credential("sec,ret", Factor.PUSH_DEFAULT)),
    ("secret,12345", Credential("secret,12345", Factor.PUSH_DEFAULT)),
    ("secret,1234567", Credential("secret,1234567", Factor.PUSH_DEFAULT)),
    ("secret,12345678901", Credential("secret,12345678901", Factor.PUSH_DEFAULT)),
    ("secret,12345a", Credential("secret,12345a", Factor.PUSH_DEFAULT)),
    ("secret,", Credential("secret,", Factor.PUSH_DEFAULT)),
    ("secret,123456\n", Credential("secret,123456\n", Factor.PUSH_DEFAULT)),
    ("secret,pushy", Credential("secret,pushy", Factor.PUSH_DEFAULT)),
    ("secret, 123456", Credential("secret, 123456", Factor.PUSH_DEFAULT)),
    # Arabic-Indic digits are digits to str.isdigit, not to us
    ("secret,\u0661\u0662\u0663\u0664\u0665\u0666",
     Credential("secret,\u0661\u0662\u0663\u0664\u0665\u0666", Factor.PUSH_DEFAULT)),
    # a code without a password: an empty password, which the engine refuses
    (",123456", Credential("", Factor.PASSCODE, "123456")),
    (",push", Credential("", Factor.PUSH_FORCED)),
    ("", Credential("", Factor.PUSH_DEFAULT)),
    ("123456", Credential("123456", Factor.PUSH_DEFAULT)),
])
def test_parse_password(raw, expected):
    assert parse_password(raw) == expected


def test_other_and_empty_delimiters():
    assert parse_password("a,b|123456", "|") == Credential("a,b", Factor.PASSCODE, "123456")
    assert parse_password("secret,123456", "|") == Credential("secret,123456",
                                                              Factor.PUSH_DEFAULT)
    assert parse_password("pw::push", "::") == Credential("pw", Factor.PUSH_FORCED)
    assert parse_password("secret,123456", "") == Credential("secret,123456",
                                                             Factor.PUSH_DEFAULT)


def test_credential_repr_hides_password_and_code():
    shown = repr(parse_password("hunter2,123456"))
    assert "hunter2" not in shown and "123456" not in shown and "PASSCODE" in shown


# -- TOTP


@pytest.mark.parametrize("now, eight", RFC_VECTORS)
def test_rfc6238_vectors_truncated_to_six_digits(now, eight):
    step = pc.totp_step(now)
    assert pc.totp(RFC_SECRET, step) == eight[-6:]
    assert pc.totp_matches(RFC_SECRET, eight[-6:], now) == step


def test_totp_step_and_seconds_left():
    assert pc.totp_step(0) == 0 and pc.totp_step(29.999) == 0 and pc.totp_step(30) == 1
    assert pc.totp_seconds_left(30) == 30 and pc.totp_seconds_left(59.5) == 1


def test_new_secret_is_160_bits_of_base32():
    secret = pc.new_totp_secret()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert len(base64.b32decode(secret)) == 20
    assert pc.new_totp_secret() != secret


def test_secret_tolerates_lower_case_and_spaces():
    spaced = " ".join(RFC_SECRET.lower()[i:i + 4] for i in range(0, len(RFC_SECRET), 4))
    assert pc.totp(spaced, 1) == pc.totp(RFC_SECRET, 1)
    with pytest.raises(ValueError):
        pc.totp("not base32!", 1)


def test_window_accepts_neighbouring_steps_only():
    now = 1_796_000_015.0
    step = pc.totp_step(now)
    for delta in (-1, 0, 1):
        assert pc.totp_matches(RFC_SECRET, pc.totp(RFC_SECRET, step + delta), now) == step + delta
    for delta in (-2, 2):
        code = pc.totp(RFC_SECRET, step + delta)
        if code not in {pc.totp(RFC_SECRET, step + d) for d in (-1, 0, 1)}:
            assert pc.totp_matches(RFC_SECRET, code, now) is None
    assert pc.totp_matches(RFC_SECRET, pc.totp(RFC_SECRET, step - 2), now, window=2) == step - 2
    assert pc.totp_matches(RFC_SECRET, pc.totp(RFC_SECRET, step + 1), now, window=0) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "０１２３４５", None])
def test_malformed_codes_never_match(code):
    assert pc.totp_matches(RFC_SECRET, code, 59) is None


def test_otpauth_uri():
    uri = pc.otpauth_uri("ABCDEF", "alice@example.com", issuer="Acme VPN")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert parts.path == "/Acme%20VPN:alice%40example.com"
    assert parse_qs(parts.query) == {"secret": ["ABCDEF"], "issuer": ["Acme VPN"],
                                     "algorithm": ["SHA1"], "digits": ["6"], "period": ["30"]}
    assert pc.otpauth_uri("ABCDEF", "bob").startswith("otpauth://totp/pushproxy:bob?secret=")


# -- bypass codes


def test_new_bypass_codes_are_twelve_digits_and_differ():
    codes = {pc.new_bypass_code() for _ in range(50)}
    assert all(re.fullmatch(r"[0-9]{12}", c) for c in codes) and len(codes) == 50


def test_new_bypass_codes_start_with_a_free_selector():
    taken = {f"{i:03d}" for i in range(1000)} - {"417"}
    code = pc.new_bypass_code(taken)
    assert pc.bypass_selector(code) == "417" and pc.is_bypass_code(code)
    with pytest.raises(ValueError):
        pc.new_bypass_code(taken | {"417"})


def test_old_ten_digit_codes_still_parse_and_have_no_selector():
    assert pc.is_bypass_code("0123456789") and pc.bypass_selector("0123456789") is None
    assert pc.parse_password("pw,123456789012").code == "123456789012"
    assert pc.bypass_selector("123456789012") == "123"
    assert not pc.is_bypass_code("12345678901")  # 11 digits: part of the password


def test_bypass_hash_round_trip_with_random_salt():
    stored = pc.hash_bypass_code("0123456789")
    scheme, salt, digest = stored.split("$")
    assert scheme == "scrypt" and len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert pc.bypass_code_matches("0123456789", stored)
    assert not pc.bypass_code_matches("0123456788", stored)
    assert pc.hash_bypass_code("0123456789") != stored  # a fresh salt each time
    assert "0123456789" not in stored


@pytest.mark.parametrize("stored", ["", "scrypt$", "md5$AAAA$AAAA", "scrypt$!!$AAAA",
                                    "scrypt$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",
                                    "scrypt$$" + base64.b64encode(b"x" * 32).decode()])
def test_malformed_stored_hashes_never_match(stored):
    assert pc.bypass_code_matches("0123456789", stored) is False


@pytest.mark.parametrize("code", ["123456", "01234567890", "012345678a", "", None])
def test_malformed_bypass_codes_never_match(code):
    stored = pc.hash_bypass_code("0123456789")
    assert pc.bypass_code_matches(code, stored) is False


def test_hash_refuses_a_malformed_code():
    with pytest.raises(ValueError):
        pc.hash_bypass_code("12345")
