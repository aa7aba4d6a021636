"""Forgery and replay over HTTP, through the real Site, service and SQLite store.

`test_service_security.py` covers the service's checks one by one; these send
whole requests (`fuzz.approval_target.Harness`) and check that a signature is
bound to its purpose, path, body and nonce, and that the login's outcome is
only ever what the phone signed.
"""

from fuzz.approval_target import NEW_PUBLIC, PHONE_KEY, Harness, http_request, json_body
from pushproxy.approval import crypto
from pushproxy.decision import PushStatus

ANSWER = "/v1/device/answer"


def post_answer(h, body: bytes, nonce: str, headers=None, path=ANSWER):
    headers = headers or h.sign_request("POST", path, body, nonce)
    return h.exchange(http_request("POST", path, headers, body), settle=1), headers


def test_a_replayed_signed_request_is_refused_and_decides_nothing_twice():
    h = Harness()
    body = json_body({"txid": "tx-plain", "decision": "approve",
                      "signature": h.sign_answer("tx-plain", "approve", None)})
    status, headers = post_answer(h, body, "a" * 22)
    assert status == [200] and h.results["tx-plain"][0].status is PushStatus.APPROVED
    again, _ = post_answer(h, body, "a" * 22, headers)
    assert again == [401]  # same nonce
    fresh, _ = post_answer(h, body, "b" * 22)
    assert fresh == [409]  # a new request with the old answer: already decided
    assert len(h.results["tx-plain"]) == 1


def test_signed_headers_do_not_carry_over_to_another_body_or_path():
    h = Harness()
    deny = json_body({"txid": "tx-plain", "decision": "deny",
                      "signature": h.sign_answer("tx-plain", "deny", None)})
    headers = h.sign_request("POST", ANSWER, deny, "c" * 22)
    approve = json_body({"txid": "tx-plain", "decision": "approve", "signature": "A" * 86})
    assert post_answer(h, approve, "unused", headers)[0] == [401]  # other body
    sub = "/v1/device/subscription"
    assert h.exchange(http_request("PUT", sub, headers, deny), settle=1) == [401]  # other path
    assert h.results["tx-plain"] == []


def test_a_signature_made_for_another_purpose_never_approves():
    """The enrollment self-signature and a request signature, offered as answer signatures."""
    h = Harness()
    text = crypto.enroll_text("tx-plain", NEW_PUBLIC, "approve")
    forgeries = (crypto.sign(PHONE_KEY, text),  # signed by the phone's own key
                 h.sign_request("POST", ANSWER, b"", "d" * 22)["X-Signature"])
    for i, forged in enumerate(forgeries):
        body = json_body({"txid": "tx-plain", "decision": "approve", "signature": forged})
        status, _ = post_answer(h, body, f"forgery-{i}".ljust(22, "f"))
        assert status == [403]
    assert h.results["tx-plain"] == []
    assert h.counters.get("answers", outcome="bad_signature") == 2


def test_an_answer_signed_for_one_transaction_or_decision_does_not_pass_for_another():
    h = Harness()
    deny_sig = h.sign_answer("tx-plain", "deny", None)
    for txid, decision in (("tx-plain", "approve"), ("tx-number", "deny")):
        body = json_body({"txid": txid, "decision": decision, "signature": deny_sig})
        assert post_answer(h, body, f"{txid}-{decision}".ljust(22, "z"))[0] == [403]
    assert h.results["tx-plain"] == [] and h.results["tx-number"] == []


def test_number_matching_approve_with_the_wrong_number_is_a_denial_not_an_approval():
    h = Harness()
    body = json_body({"txid": "tx-number", "decision": "approve", "number": "41",
                      "signature": h.sign_answer("tx-number", "approve", "41")})
    assert post_answer(h, body, "e" * 22)[0] == [200]
    assert h.results["tx-number"][0].status is PushStatus.NUMBER_MISMATCH
