"""Issue 21 acceptance, presence: Approve with a face or fingerprint (a passkey).

The daemon as `pushproxy serve` builds it, with the test slapd, real radclient
logins and headless Chromium (tests/integration/chromium.py) whose platform
authenticator is a DevTools virtual authenticator (``WebAuthn.addVirtualAuthenticator``:
ctap2, internal transport, resident keys, user verification). The app is opened
at ``http://localhost:PORT``: WebAuthn takes no IP address as RP ID, and
localhost is a secure context.

The policy requires presence for every push (``require_user_verification``);
the command-line authenticator, which has no passkey, is refused under
``user_verification_fallback: refuse`` and let through, audited as
``not_verified``, under ``allow``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from pushproxy.approval.store import SQLiteStore
from tests.integration.chromium import (LOAD_RECORD, EnrolledApp, Phone, blocking,
                                        enroll_in_browser, in_thread, wait_for)
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient_sync
from tests.integration.test_approval_e2e import Stack, first_request, login_attrs

POLICY = """\
policy:
  require_user_verification: true
  user_verification_fallback: {fallback}
"""


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """Headless Chromium with a virtual platform authenticator that verifies the user."""
    from tests.integration.chromium import require_chromium

    require_chromium()
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path_factory.getbasetemp())
    browser = blocking(Phone, profile)
    yield browser
    blocking(browser.quit)
    shutil.rmtree(profile, ignore_errors=True)


def start_stack(slapd, tmp_path_factory, fallback: str) -> Stack:
    return pytest_twisted.blockon(Stack(
        tmp_path_factory.mktemp(f"presence-{fallback}"), slapd, timeout=20,
        public_host="localhost", extra=POLICY.format(fallback=fallback),
        # two of alice's logins open at once (the replay test)
        push_extra="limits: {max_pending: 3}\n").start())


@pytest.fixture(scope="module")
def stack(slapd, tmp_path_factory):
    """The daemon requiring presence, refusing devices without a passkey."""
    running = start_stack(slapd, tmp_path_factory, "refuse")
    yield running
    pytest_twisted.blockon(running.stop())


def add_authenticator(phone: Phone) -> str:
    """A virtual platform authenticator for the current page's target; its id."""
    phone.cdp("WebAuthn.enable", {"enableUI": False})
    return phone.cdp("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})["authenticatorId"]


@pytest.fixture(scope="module")
def app(phone, stack):
    """The app enrolled for alice, with its passkey made at enrollment."""
    enrolled = EnrolledApp(phone, stack, host="localhost")

    def enroll():
        phone.open(enrolled.app_url)  # the target the authenticator belongs to
        enrolled.authenticator = add_authenticator(phone)
        enroll_in_browser(phone, enrolled, stack.link())

    blocking(enroll)
    return enrolled


def passkeys(stack, user="alice"):
    """(device, its passkeys) of the user's only device, read from the database."""
    store = SQLiteStore(stack.config.approval.database)
    try:
        (device,) = store.devices(user)
        return device, store.passkeys(device.id)
    finally:
        store.close()


def last_audit(stack, count: int) -> dict:
    """The last audit line, once there are ``count``."""
    return wait_for(lambda: (lambda a: a if len(a) >= count else None)(stack.audit()),
                    f"{count} audit lines")[-1]


def audit_count(stack) -> int:
    return len(stack.audit()) if (stack.tmp_path / "audit.jsonl").exists() else 0


def approve_in_page(app: EnrolledApp, station: str, result: str):
    """A radclient login from station; tap Approve in the page; (RADIUS reply, result text)."""
    phone = app.phone
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(radclient_sync, app.stack.radius, SECRET,
                            login_attrs(station=station), timeout=30)
        phone.visible("screen-request")
        phone.wait_text("request-client-ip", station)
        assert phone.text("request-hint") == "Approving asks for your face or fingerprint."
        phone.click("approve")
        phone.wait_text("result-title", result)
        return login.result(timeout=40), phone.text("result-detail")


@pytest_twisted.inlineCallbacks
def test_enrollment_creates_a_platform_passkey_bound_to_the_device(app):
    device, keys = yield in_thread(wait_for, lambda: (lambda d: d if d[1] else None)(
        passkeys(app.stack)), "the passkey in the store")
    (passkey,) = keys
    assert passkey.device_id == device.id and passkey.user_verified
    stored = yield in_thread(app.phone.run_async, LOAD_RECORD + "return record.passkey;")
    assert stored is True
    credentials = yield in_thread(app.phone.cdp, "WebAuthn.getCredentials",
                                  {"authenticatorId": app.authenticator})
    (credential,) = credentials["credentials"]
    assert credential["rpId"] == "localhost" and not credential["isResidentCredential"]
    listed = yield threads.deferToThread(subprocess.run, [
        sys.executable, "-m", "pushproxy.cli", "devices", "list", "--config",
        str(app.stack.config_path)], capture_output=True, text=True, timeout=60)
    (line,) = [x for x in listed.stdout.splitlines() if x.startswith(device.id)]
    assert line.endswith(", passkey"), listed.stdout


@pytest_twisted.inlineCallbacks
def test_approve_with_a_verified_face_gives_accept(app):
    before = audit_count(app.stack)
    count = passkeys(app.stack)[1][0].sign_count
    reply, _ = yield in_thread(approve_in_page, app, "203.0.113.21", "Approved")
    assert reply.code == "Access-Accept"
    event = last_audit(app.stack, before + 1)
    assert (event["reason"], event["presence"]) == ("push_approved", "verified")
    assert passkeys(app.stack)[1][0].sign_count > count


@pytest_twisted.inlineCallbacks
def test_approve_without_user_verification_is_refused(app):
    before = audit_count(app.stack)
    yield in_thread(app.phone.cdp, "WebAuthn.setUserVerified",
                    {"authenticatorId": app.authenticator, "isUserVerified": False})
    try:
        reply, detail = yield in_thread(approve_in_page, app, "203.0.113.22", "Not approved")
    finally:
        yield in_thread(app.phone.cdp, "WebAuthn.setUserVerified",
                        {"authenticatorId": app.authenticator, "isUserVerified": True})
    assert reply.code == "Access-Reject" and "face or fingerprint" in detail
    event = last_audit(app.stack, before + 1)
    assert event["reason"] == "presence_not_verified"
    # Chromium makes no assertion when verification is required and fails: the app
    # sends its Approve without one, and the server refuses and records that
    assert event["presence"] == "refused:no_assertion", event


#: Page script: the device record, then the assertion for arguments[0] (a txid), made by
#: the browser's authenticator for the challenge the server hands this device (with
#: arguments[1], if given, as userVerification: what a tampered page could ask for).
ASSERT_FOR = LOAD_RECORD + """
    const device = {deviceId: record.deviceId, privateKey: record.privateKey};
    const base = new URL("../", location.href).href;
    const options = await PP.call(base, "POST", "v1/device/presence",
      {body: {txid: args[0], decision: "approve"}, device});
    const o = options.publicKey;
    if (args[1]) o.userVerification = args[1];
    const credential = await navigator.credentials.get({publicKey: {...o,
      challenge: PP.b64uDecode(o.challenge),
      allowCredentials: o.allowCredentials.map((c) => ({...c, id: PP.b64uDecode(c.id)}))}});
    return PK.credentialJson(credential);
"""

#: Page script: approve arguments[0] (a pending entry) with arguments[1] as its assertion;
#: the HTTP status and error code.
ANSWER_WITH = LOAD_RECORD + """
    const device = {deviceId: record.deviceId, privateKey: record.privateKey};
    const base = new URL("../", location.href).href;
    const entry = args[0];
    const signature = await PP.sign(record.privateKey, PP.answerText(
      entry.txid, entry.nonce, "approve", entry.username, record.deviceId, null));
    try {
      await PP.call(base, "POST", "v1/device/answer", {device,
        body: {txid: entry.txid, decision: "approve", signature, webauthn: args[1]}});
      return {status: 200};
    } catch (err) {
      return {status: err.status, code: err.code};
    }
"""


@pytest_twisted.inlineCallbacks
def test_an_assertion_made_for_another_transaction_is_refused(app, tmp_path):
    """The browser's real assertion for login 1, replayed for login 2 (whose own
    challenge was handed out): refused. The same assertion then approves login 1."""
    before = audit_count(app.stack)
    phone = app.phone
    # A second enrolled device of alice reads the pending list (nonces) without a passkey.
    reader = yield app.stack.device(name="reader")

    def entry_for(station):
        return wait_for(lambda: next((e for e in auth.pending(reader)
                                      if e["client_ip"] == station), None), station)

    def scenario():
        phone.open("about:blank")  # the app steps aside: this test answers by hand
        phone.open(app.origin + "/app/?presence-test")
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(radclient_sync, app.stack.radius, SECRET,
                                login_attrs(station="203.0.113.31"), timeout=30)
            tx1 = entry_for("203.0.113.31")
            made_for_first = phone.run_async(ASSERT_FOR, tx1["txid"])
            second = pool.submit(radclient_sync, app.stack.radius, SECRET,
                                 login_attrs(station="203.0.113.32"), timeout=30)
            tx2 = entry_for("203.0.113.32")
            phone.run_async(ASSERT_FOR.split("const credential")[0] + "return true;",
                            tx2["txid"])  # login 2's own challenge is open
            replayed = phone.run_async(ANSWER_WITH, tx2, made_for_first)
            second_reply = second.result(timeout=40)
            own = phone.run_async(ANSWER_WITH, tx1, made_for_first)
            return replayed, second_reply, own, first.result(timeout=40)

    replayed, second_reply, own, first_reply = yield in_thread(scenario)
    assert replayed == {"status": 403, "code": "presence_not_verified"}
    assert second_reply.code == "Access-Reject"
    assert own == {"status": 200} and first_reply.code == "Access-Accept"
    events = last_audit(app.stack, before + 2) and app.stack.audit()[before:]
    by_station = {e["calling_station"]: e for e in events}
    assert by_station["203.0.113.32"]["reason"] == "presence_not_verified"
    assert by_station["203.0.113.32"]["presence"] == "refused:wrong_challenge"
    assert by_station["203.0.113.31"]["presence"] == "verified"


@pytest_twisted.inlineCallbacks
def test_the_cli_authenticator_is_refused_under_refuse(stack):
    state = yield stack.device(user="bob", name="cli")
    before = audit_count(stack)
    login = threads.deferToThread(radclient_sync, stack.radius, SECRET,
                                  login_attrs(user="bob", password="bob-pw"), timeout=30)
    request = yield threads.deferToThread(first_request, state)
    assert request["user_verification"] == "required"
    with pytest.raises(auth.ApiError) as refused:
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    assert refused.value.code == "presence_not_verified"
    assert (yield login).code == "Access-Reject"
    event = last_audit(stack, before + 1)
    assert (event["reason"], event["presence"]) == ("presence_not_verified",
                                                    "refused:no_passkey")


@pytest.fixture(scope="module")
def allowing(slapd, tmp_path_factory):
    """The daemon requiring presence but allowing devices without a passkey."""
    running = start_stack(slapd, tmp_path_factory, "allow")
    yield running
    pytest_twisted.blockon(running.stop())


@pytest_twisted.inlineCallbacks
def test_the_cli_authenticator_is_let_through_under_allow_and_audited(allowing):
    state = yield allowing.device(user="bob", name="cli")
    login = threads.deferToThread(radclient_sync, allowing.radius, SECRET,
                                  login_attrs(user="bob", password="bob-pw"), timeout=30)
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    assert (yield login).code == "Access-Accept"
    event = last_audit(allowing, 1)
    assert (event["reason"], event["presence"]) == ("push_approved", "not_verified")


@pytest_twisted.inlineCallbacks
def test_an_assertion_without_the_uv_flag_is_refused_by_the_server(app):
    """A tampered page asks the authenticator for no verification: the browser's
    assertion then has UV off, and the server (not the page) refuses it."""
    before = audit_count(app.stack)
    phone = app.phone
    reader = yield app.stack.device(name="reader-uv")

    def scenario():
        phone.open("about:blank")
        phone.open(app.origin + "/app/?presence-test")
        phone.cdp("WebAuthn.setUserVerified", {"authenticatorId": app.authenticator,
                                               "isUserVerified": False})
        try:
            with ThreadPoolExecutor(1) as pool:
                login = pool.submit(radclient_sync, app.stack.radius, SECRET,
                                    login_attrs(station="203.0.113.41"), timeout=30)
                entry = wait_for(lambda: next((e for e in auth.pending(reader)
                                               if e["client_ip"] == "203.0.113.41"), None),
                                 "the request")
                made = phone.run_async(ASSERT_FOR, entry["txid"], "discouraged")
                answered = phone.run_async(ANSWER_WITH, entry, made)
                return made, answered, login.result(timeout=40)
        finally:
            phone.cdp("WebAuthn.setUserVerified", {"authenticatorId": app.authenticator,
                                                   "isUserVerified": True})

    made, answered, reply = yield in_thread(scenario)
    assert made["response"]["authenticatorData"]  # the browser did sign, without UV
    assert answered == {"status": 403, "code": "presence_not_verified"}
    assert reply.code == "Access-Reject"
    event = last_audit(app.stack, before + 1)
    assert (event["reason"], event["presence"]) == ("presence_not_verified", "refused:uv_off")


@pytest_twisted.inlineCallbacks
def test_add_another_device_asks_for_the_face_and_refuses_without_it(app):
    """A thief holding the unlocked phone cannot make a setup link for a phone of their
    own: "Add another device" needs the passkey too."""
    from tests.integration.test_rollout_chromium import add_device_link

    phone = app.phone

    def scenario():
        phone.open(app.app_url)
        phone.cdp("WebAuthn.setUserVerified", {"authenticatorId": app.authenticator,
                                               "isUserVerified": False})
        try:
            phone.visible("screen-idle")
            phone.click("add-device")
            phone.wait_text("add-device-status", "Could not make a setup link")
            refused = phone.driver.find_element("id", "add-device-box").is_displayed()
        finally:
            phone.cdp("WebAuthn.setUserVerified", {"authenticatorId": app.authenticator,
                                                   "isUserVerified": True})
        return refused, add_device_link(phone)

    refused, (link, qr) = yield in_thread(scenario)
    assert not refused
    assert "/app/enroll#" in link and qr.startswith("data:image/png;base64,")
