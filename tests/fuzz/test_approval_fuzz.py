"""Property-based fuzzing of the approval API: raw HTTP into the real Site, service and store.

Hostile JSON (wrong types, huge numbers, deep nesting, lone surrogates,
non-ASCII digits), fuzzed and forged device-authentication headers, forged
and replayed answers. The oracle (`fuzz.approval_target`): never a 5xx, never
an approval the harness did not sign itself, never an enrollment without the
real token. Deterministic (derandomized); ``PUSHPROXY_FUZZ_EXAMPLES`` raises
the number of examples for a long run (docs/security.md).
"""

import base64
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.approval_target import (NEW_PUBLIC, PASSKEY_ID, Harness, OracleFailure, http_request,
                                  json_body)
from pushproxy.decision import PushStatus
from pushproxy.approval.crypto import DECISIONS

EXAMPLES = int(os.environ.get("PUSHPROXY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
                suppress_health_check=list(HealthCheck))

NASTY_TEXT = st.sampled_from([
    "", " ", "\x00", "\ud800", "a\udfff", "\u00b2", "\u0661\u0662", "\u00b2\u00b2",
    "9" * 400, "-1", "1e309", "NaN", "1_800_000_000", "+1800000000", " 1800000000 ",
    "approve\x00", "APPROVE", "tx-plain\n", "../../etc", "=" * 90, "A" * 86, "%00",
    "*)(uid=*", "\u202eevil", "\U0001f600" * 20, "a" * 5000,
])
TEXT = st.one_of(st.text(max_size=40), NASTY_TEXT,
                 st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3))
# Digits of other scripts pass str.isdigit(); superscripts too.
NUMBER = st.text(alphabet="0123456789\u00b2\u00b3\u0661\u0662\u0663\uff14", max_size=5)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                   st.sampled_from([10 ** 400, -10 ** 400]), st.floats(), TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def field(valid):
    """The valid value (often), or anything JSON."""
    return st.one_of(st.just(valid), st.just(valid), JSON)


@FUZZ
@given(data=st.data())
def test_enroll_bodies_never_5xx_and_never_enroll_without_the_real_token(data):
    h = Harness()
    real = data.draw(st.booleans())
    body = {"token": data.draw(field(h.token if real else "guessed-token")),
            "public_key": data.draw(field(NEW_PUBLIC)),
            "name": data.draw(field("new phone")),
            "push_subscription": data.draw(st.one_of(st.none(), JSON))}
    sign = data.draw(st.booleans())
    signature = None
    if sign and all(isinstance(body[k], str) for k in ("token", "public_key", "name")):
        signature = h.sign_enroll(body["token"], body["public_key"], body["name"])
    body["signature"] = signature or data.draw(field("A" * 86))
    for key in data.draw(st.lists(st.sampled_from(list(body)), max_size=2, unique=True)):
        del body[key]
    h.token_sent = body.get("token") == h.token
    h.check(h.exchange(http_request("POST", "/v1/enroll", {}, json_body(body))))


@FUZZ
@given(data=st.data())
def test_answers_never_5xx_and_approve_only_when_validly_signed(data):
    h = Harness()
    txid = data.draw(field(data.draw(st.sampled_from(["tx-plain", "tx-number"]))))
    decision = data.draw(field(data.draw(st.sampled_from(DECISIONS))))
    number = data.draw(st.one_of(st.none(), st.just("42"), st.just("41"), NUMBER, TEXT, JSON))
    signature = None
    if data.draw(st.booleans()) and isinstance(txid, str) and isinstance(decision, str):
        signature = h.sign_answer(txid, decision, number if isinstance(number, str) else None)
    signature = signature or data.draw(field("A" * 86))
    body = json_body({"txid": txid, "decision": decision, "signature": signature,
                      "number": number})
    nonce = data.draw(st.one_of(st.just("n" * 22), TEXT))
    headers = h.sign_request("POST", "/v1/device/answer", body,
                             nonce if nonce.isascii() else "n" * 22)
    if data.draw(st.integers(0, 4)) == 0:  # tamper with one signed header
        name = data.draw(st.sampled_from(sorted(headers)))
        headers[name] = data.draw(TEXT)
    statuses = h.exchange(http_request("POST", "/v1/device/answer", headers, body))
    h.check(statuses)
    # the same signed request again: a replay is refused, never a second decision or a 5xx
    h.check(h.exchange(http_request("POST", "/v1/device/answer", headers, body)))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
       path=st.one_of(st.sampled_from(["/v1/info", "/v1/enroll", "/v1/device/pending",
                                       "/v1/device/pending?wait=5", "/v1/device/answer",
                                       "/v1/device/subscription", "/v1/device/pending?wait=1e9",
                                       "/v1/device/pending?wait=" + "9" * 500, "/", "/app"]),
                      st.text(max_size=30).map(lambda t: "/v1/" + t.replace(" ", ""))),
       headers=st.dictionaries(st.sampled_from(["X-Device-Id", "X-Timestamp", "X-Nonce",
                                                "X-Signature", "Content-Type"]), TEXT),
       sign=st.booleans(), body=JSON,
       timestamp=st.one_of(st.none(), TEXT, st.integers(-(10 ** 500), 10 ** 500).map(str)))
def test_any_endpoint_with_fuzzed_auth_headers_never_5xx(method, path, headers, sign, body,
                                                         timestamp):
    h = Harness()
    raw_body = json_body(body)
    if sign and path.isascii():
        ts = timestamp if timestamp is not None and timestamp.isascii() else None
        headers = {**h.sign_request(method, path, raw_body, "n" * 22, ts), **headers}
    h.check(h.exchange(http_request(method, path, headers, raw_body)))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=400), st.builds(
    lambda head, rest: b"POST /v1/enroll HTTP/1.1\r\n" + head + b"\r\n\r\n" + rest,
    st.binary(max_size=100), st.binary(max_size=200))))
def test_raw_bytes_never_5xx(raw):
    h = Harness()
    h.check(h.exchange(raw), expect_answer=False)


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


#: A WebAuthn assertion shaped right, with fuzzed contents (raw bytes, JSON, CBOR-ish).
ASSERTION = st.fixed_dictionaries({
    "id": st.one_of(st.just(PASSKEY_ID), st.binary(max_size=40).map(b64u)),
    "type": st.one_of(st.just("public-key"), TEXT),
    "response": st.fixed_dictionaries({
        "clientDataJSON": st.one_of(
            st.binary(max_size=300).map(b64u),
            JSON.map(lambda v: b64u(json.dumps(v).encode("ascii")))),
        "authenticatorData": st.one_of(st.binary(max_size=120).map(b64u),
                                       st.binary(min_size=37, max_size=37).map(b64u)),
        "signature": st.one_of(st.binary(max_size=80).map(b64u), TEXT),
        "userHandle": st.one_of(st.none(), TEXT)}),
}).map(lambda c: {**c, "rawId": c["id"]})


@FUZZ
@given(data=st.data())
def test_presence_answers_never_5xx_and_never_approve(data):
    """The login that needs presence: its phone has a passkey nobody can use, so no
    approve, with whatever webauthn payload, may ever approve it."""
    h = Harness()
    if data.draw(st.booleans()):  # the challenge handed out first: deeper checks run
        body = json_body({"txid": "tx-presence", "decision": "approve"})
        h.check(h.exchange(http_request("POST", "/v1/device/presence",
                                        h.sign_request("POST", "/v1/device/presence", body,
                                                       "p" * 22), body)))
    webauthn = data.draw(st.one_of(ASSERTION, JSON, st.none()))
    signature = h.sign_answer("tx-presence", "approve", None)
    body = json_body({"txid": "tx-presence", "decision": "approve", "signature": signature,
                      "webauthn": webauthn})
    headers = h.sign_request("POST", "/v1/device/answer", body, "n" * 22)
    h.check(h.exchange(http_request("POST", "/v1/device/answer", headers, body)))
    got = h.results["tx-presence"]
    assert not got or got[0].status is not PushStatus.APPROVED


# -- regressions: inputs the fuzzers found (each was a 500 before the fix)


def test_lone_surrogate_in_a_json_string_is_400():
    h = Harness()
    body = {"token": "\ud800", "public_key": NEW_PUBLIC, "name": "x", "signature": "A" * 86}
    assert h.exchange(http_request("POST", "/v1/enroll", {}, json_body(body))) == [400]
    answer = json_body({"txid": "\ud800", "decision": "approve", "signature": "A" * 86})
    headers = h.sign_request("POST", "/v1/device/answer", answer, "n" * 22)
    assert h.exchange(http_request("POST", "/v1/device/answer", headers, answer)) == [400]


@pytest.mark.parametrize("stamp", ["9" * 400, "+1800000000", "1_800_000_000", " 1800000000",
                                   "-1800000000"])
def test_timestamp_that_is_not_plain_digits_is_401(stamp):
    """A 400-digit timestamp overflowed float arithmetic; int() also took '+', '_', spaces."""
    h = Harness()
    headers = h.sign_request("GET", "/v1/device/pending", b"", "n" * 22, stamp)
    assert h.exchange(http_request("GET", "/v1/device/pending", headers, b"")) == [401]
    assert h.counters.get("device_auth_failures") == 1


def test_number_in_other_digits_is_refused_not_a_crash():
    """'\\u00b2' passed str.isdigit(), then hmac.compare_digest raised on non-ASCII."""
    h = Harness()
    signature = h.sign_answer("tx-number", "approve", "\u00b2")
    body = json_body({"txid": "tx-number", "decision": "approve", "signature": signature,
                      "number": "\u00b2"})
    headers = h.sign_request("POST", "/v1/device/answer", body, "n" * 22)
    assert h.exchange(http_request("POST", "/v1/device/answer", headers, body)) == [400]
    assert h.results["tx-number"] == []  # still waiting: neither approved nor denied


def test_crypto_verify_is_false_for_text_no_device_can_sign():
    from pushproxy.approval import crypto
    from fuzz.approval_target import PHONE_KEY

    assert crypto.verify(PHONE_KEY.public_key(), "tx-\ud800", "A" * 86) is False


def test_the_oracle_sees_a_validly_signed_approval_as_allowed_and_a_forged_one_not():
    """The checks can fail: an approval is recorded as signed only through sign_answer."""
    h = Harness()
    signature = h.sign_answer("tx-plain", "approve", None)
    body = json_body({"txid": "tx-plain", "decision": "approve", "signature": signature})
    headers = h.sign_request("POST", "/v1/device/answer", body, "n" * 22)
    assert h.exchange(http_request("POST", "/v1/device/answer", headers, body)) == [200]
    h.check([200])
    h.signed_approvals.clear()
    with pytest.raises(OracleFailure, match="approved without"):
        h.check([200])
