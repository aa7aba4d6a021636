"""Presence (passkeys) through the running approval API: real service, store and Site
on loopback, devices of the command-line authenticator's client, and a software
WebAuthn authenticator (tests/approval/softauthn.py) that gets each field wrong on
purpose. Every refusal must decide nothing but a refusal: never an approval."""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted

from pushproxy.approval import authenticator as auth
from pushproxy.approval import crypto
from pushproxy.approval.presence import RelyingParty
from pushproxy.decision import PushStatus
from tests.approval.softauthn import UP, SoftAuthenticator
from tests.approval.test_authenticator_e2e import World, answered, enrolled, in_thread

RP = RelyingParty(rp_id="localhost", origin="https://localhost:8443")


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def world(reactor):
    w = World(reactor, relying_party=RP)
    yield w
    w.close()


def call(state_dir, method, path, body=None):
    """A device-signed request; (status, JSON body) whatever the status."""
    with auth.DeviceClient(state_dir) as device:
        try:
            return 200, device.request(method, path, body)
        except auth.ApiError as exc:
            return exc.status, {"error": exc.code, "message": exc.message}


def register(state_dir, soft=None, **wrong):
    """Register a passkey of ``soft`` (a new one by default) for the device."""
    soft = soft or SoftAuthenticator(RP.rp_id, RP.origin)
    status, options = call(state_dir, "POST", "/v1/device/passkey-options", {})
    assert status == 200, options
    credential = soft.create(options["publicKey"], **wrong)
    return soft, call(state_dir, "POST", "/v1/device/passkey", {"credential": credential})


def approve(state_dir, txid, webauthn=None, raw_webauthn=None):
    """Approve ``txid`` with ``webauthn`` (or a raw field value) in the answer."""
    with auth.DeviceClient(state_dir) as device:
        entries, _ = device.pending(0)
        entry = auth.find_request(entries, txid)
        text = crypto.answer_text(txid, entry["nonce"], "approve", entry["username"],
                                  device.state.device_id, None)
        body = {"txid": txid, "decision": "approve", "signature": crypto.sign(device._key, text)}
        if webauthn is not None:
            body["webauthn"] = webauthn
        if raw_webauthn is not None:
            body["webauthn"] = raw_webauthn
        try:
            return 200, device.request("POST", "/v1/device/answer", body)
        except auth.ApiError as exc:
            return exc.status, {"error": exc.code, "message": exc.message}


def options_for(state_dir, txid):
    status, body = call(state_dir, "POST", "/v1/device/presence",
                        {"txid": txid, "decision": "approve"})
    assert status == 200, body
    return body["publicKey"]


async def with_passkey(world, tmp_path, name="phone"):
    state_dir, _ = await enrolled(world, tmp_path, name=name)
    soft, (status, body) = await in_thread(register, state_dir)
    assert status == 200 and body["credential_id"] == soft.id, body
    return state_dir, soft


async def refused_login(world, state_dir, make_webauthn, code):
    """A login needing presence whose Approve carries make_webauthn(options): refused."""
    request, login = world.login(user_verification="refuse")
    options = await in_thread(options_for, state_dir, request.txid)
    status, body = await in_thread(approve, state_dir, request.txid, make_webauthn(options))
    assert (status, body["error"]) == (403, "presence_not_verified"), body
    result = await login
    assert result.status is PushStatus.PRESENCE_NOT_VERIFIED
    assert result.presence == f"refused:{code}", result.presence
    return result


@pytest_twisted.ensureDeferred
async def test_a_verified_assertion_approves_and_moves_the_counter(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    (stored,) = world.store.passkeys(auth.load_state(state_dir)[0].device_id)
    assert stored.user_verified and stored.sign_count == 0
    request, login = world.login(user_verification="refuse")
    entries = await in_thread(auth.pending, state_dir)
    assert entries[0]["user_verification"] == "required"
    options = await in_thread(options_for, state_dir, request.txid)
    assert options["userVerification"] == "required" and options["rpId"] == "localhost"
    assert [c["id"] for c in options["allowCredentials"]] == [soft.id]
    status, body = await in_thread(approve, state_dir, request.txid, soft.get(options))
    assert status == 200, body
    result = await login
    assert result.status is PushStatus.APPROVED and result.presence == "verified"
    assert world.store.passkeys(stored.device_id)[0].sign_count == 1


@pytest_twisted.ensureDeferred
async def test_the_uv_flag_off_is_refused(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    await refused_login(world, state_dir, lambda o: soft.get(o, flags=UP), "uv_off")


@pytest_twisted.ensureDeferred
async def test_a_wrong_origin_is_refused(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    await refused_login(world, state_dir,
                        lambda o: soft.get(o, origin="https://evil.example"), "wrong_origin")


@pytest_twisted.ensureDeferred
async def test_a_wrong_rp_id_is_refused(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    await refused_login(world, state_dir, lambda o: soft.get(o, rp_id="evil.example"),
                        "wrong_rp_id")


@pytest_twisted.ensureDeferred
async def test_a_counter_going_backwards_is_refused(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    request, login = world.login(user_verification="refuse")
    options = await in_thread(options_for, state_dir, request.txid)
    assert (await in_thread(approve, state_dir, request.txid, soft.get(options, count=7)))[0] \
        == 200
    await login
    # a clone of the authenticator, behind the original
    await refused_login(world, state_dir, lambda o: soft.get(o, count=5), "counter")


@pytest_twisted.ensureDeferred
async def test_a_passkey_of_another_device_is_refused(world, tmp_path):
    _, soft_a = await with_passkey(world, tmp_path, name="phone-a")
    state_b, _ = await with_passkey(world, tmp_path, name="phone-b")
    await refused_login(world, state_b, soft_a.get, "other_credential")


@pytest_twisted.ensureDeferred
async def test_an_assertion_for_another_transaction_is_refused(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    first, login1 = world.login(user_verification="refuse")
    made_for_first = soft.get(await in_thread(options_for, state_dir, first.txid))
    # the second request's own challenge is open: the replay still fails, on its challenge
    await refused_login(world, state_dir, lambda _options: made_for_first, "wrong_challenge")
    assert not answered(login1)


@pytest_twisted.ensureDeferred
async def test_a_challenge_is_single_use(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    request, login = world.login(user_verification="refuse")
    options = await in_thread(options_for, state_dir, request.txid)
    status, _ = await in_thread(approve, state_dir, request.txid,
                                soft.get(options, origin="https://evil.example"))
    assert status == 403
    assert (await login).status is PushStatus.PRESENCE_NOT_VERIFIED


@pytest_twisted.ensureDeferred
async def test_malformed_payloads_are_400_and_decide_nothing(world, tmp_path):
    state_dir, soft = await with_passkey(world, tmp_path)
    request, login = world.login(user_verification="refuse")
    options = await in_thread(options_for, state_dir, request.txid)
    good = soft.get(options)
    bad_cbor = json.loads(json.dumps(good))
    bad_cbor["response"]["authenticatorData"] = base64.urlsafe_b64encode(
        b"\xff" * 40).decode().rstrip("=")
    huge = json.loads(json.dumps(good))
    huge["response"]["clientDataJSON"] = "A" * 5000
    for raw in ("{not json", 17, [], {"id": "x"}, {**good, "type": "password"},
                {**good, "rawId": "!!!"}, huge, {**good, "response": "x"}):
        status, body = await in_thread(approve, state_dir, request.txid, raw_webauthn=raw)
        assert status == 400, (raw if not isinstance(raw, dict) else list(raw), body)
    assert not answered(login)
    # shaped right but its bytes are garbage: refused, as any failed check
    status, body = await in_thread(approve, state_dir, request.txid, bad_cbor)
    assert status == 403
    result = await login
    assert result.status is PushStatus.PRESENCE_NOT_VERIFIED


@pytest_twisted.ensureDeferred
async def test_a_device_without_a_passkey_follows_the_fallback(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    request, login = world.login(user_verification="refuse")
    status, body = await in_thread(approve, state_dir, request.txid)
    assert (status, body["error"]) == (403, "presence_not_verified")
    assert (await login).presence == "refused:no_passkey"
    request, login = world.login(user_verification="allow")
    status, body = await in_thread(approve, state_dir, request.txid)
    assert status == 200, body
    result = await login
    assert result.status is PushStatus.APPROVED and result.presence == "not_verified"


@pytest_twisted.ensureDeferred
async def test_a_device_with_a_passkey_must_use_it_even_under_allow(world, tmp_path):
    state_dir, _ = await with_passkey(world, tmp_path)
    request, login = world.login(user_verification="allow")
    status, _ = await in_thread(approve, state_dir, request.txid)
    assert status == 403
    assert (await login).presence == "refused:no_assertion"


@pytest_twisted.ensureDeferred
async def test_deny_never_needs_a_passkey(world, tmp_path):
    state_dir, _ = await with_passkey(world, tmp_path)
    request, login = world.login(user_verification="refuse")
    await in_thread(auth.answer, state_dir, request.txid, "deny")
    result = await login
    assert result.status is PushStatus.DENIED and result.presence is None


@pytest_twisted.ensureDeferred
async def test_a_login_without_presence_ignores_passkeys(world, tmp_path):
    state_dir, _ = await with_passkey(world, tmp_path)
    request, login = world.login()
    assert (await in_thread(call, state_dir, "POST", "/v1/device/presence",
                            {"txid": request.txid, "decision": "approve"}))[0] == 409
    await in_thread(auth.answer, state_dir, request.txid, "approve")
    result = await login
    assert result.status is PushStatus.APPROVED and result.presence is None


@pytest_twisted.ensureDeferred
async def test_bad_registrations_are_refused(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    for wrong, status_code in (({"flags": UP}, 403), ({"origin": "https://evil.example"}, 403),
                               ({"rp_id": "evil.example"}, 403)):
        _, (status, body) = await in_thread(register, state_dir, **wrong)
        assert status == status_code, (wrong, body)
    # no challenge asked for first
    soft = SoftAuthenticator(RP.rp_id, RP.origin)
    credential = soft.create({"challenge": "AAAA"})
    status, _ = await in_thread(call, state_dir, "POST", "/v1/device/passkey",
                                {"credential": credential})
    assert status == 403
    for raw in (None, "x", {"id": "a"}, {**credential, "response": {"clientDataJSON": "x"}}):
        status, _ = await in_thread(call, state_dir, "POST", "/v1/device/passkey",
                                    {"credential": raw})
        assert status == 400, raw
    assert world.store.passkeys(auth.load_state(state_dir)[0].device_id) == []


@pytest.fixture
def ip_world(reactor):
    w = World(reactor, relying_party=RelyingParty.from_public_url("http://127.0.0.1:8443"))
    yield w
    w.close()


@pytest_twisted.ensureDeferred
async def test_an_ip_address_public_url_offers_no_passkeys(ip_world, tmp_path):
    """WebAuthn refuses an IP address as RP ID: the server says so instead of failing later."""
    state_dir, _ = await enrolled(ip_world, tmp_path)
    status, body = await in_thread(call, state_dir, "POST", "/v1/device/passkey-options", {})
    assert (status, body["error"]) == (409, "no_rp")


def test_the_cli_says_when_a_request_needs_presence():
    from pushproxy.approval.authenticator_cli import describe

    entry = {"txid": "t", "username": "alice", "created": 1.0, "expires": 61.0,
             "user_verification": "required"}
    assert "presence:    needs a face or fingerprint" in describe(entry, 1.0)
    assert "presence" not in describe({**entry, "user_verification": "none"}, 1.0)


def add_device(state_dir, webauthn=None):
    body = {} if webauthn is None else {"webauthn": webauthn}
    return call(state_dir, "POST", "/v1/device/enrollment", body)


@pytest.fixture
def linking_world(reactor):
    from pushproxy.approval.api import build_site

    w = World(reactor, relying_party=RP)
    # World's site offers no "add a device": this one does
    w.port.stopListening()
    w.port = reactor.listenTCP(0, build_site(w.service, max_body=16384, reactor=reactor,
                                             device_links=(w.base_url, 900.0)),
                               interface="127.0.0.1")
    w.base_url = f"http://127.0.0.1:{w.port.getHost().port}"
    yield w
    w.close()


@pytest_twisted.ensureDeferred
async def test_a_device_with_a_passkey_adds_a_device_only_with_presence(linking_world,
                                                                       tmp_path):
    """A thief with the unlocked phone must not enroll a phone of their own."""
    world = linking_world
    plain, _ = await enrolled(world, tmp_path, name="no-passkey")
    assert (await in_thread(add_device, plain))[0] == 200  # no passkey: as before
    state_dir, soft = await with_passkey(world, tmp_path)
    status, body = await in_thread(add_device, state_dir)
    assert (status, body["error"]) == (403, "presence_not_verified")

    def options():
        return call(state_dir, "POST", "/v1/device/presence", {"decision": "add_device"})

    status, body = await in_thread(options)
    status, refused = await in_thread(add_device, state_dir, soft.get(body["publicKey"],
                                                                      flags=UP))
    assert (status, refused["error"]) == (403, "presence_not_verified")  # UV off
    status, body = await in_thread(options)
    status, answer = await in_thread(add_device, state_dir, soft.get(body["publicKey"]))
    assert status == 200 and "#" in answer["link"]
