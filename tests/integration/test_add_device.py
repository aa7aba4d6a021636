"""Issue 19: "add a device": an enrolled device asks for a one-time link, a new device
redeems it; a request not signed by an active device of the user gets no link."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import requests
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from pushproxy.approval import crypto
from pushproxy.approval.store import SQLiteStore
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import first_request, login_attrs


def add_device_cli(state):
    done = subprocess.run([sys.executable, "-m", "pushproxy.cli", "authenticator", "add-device",
                           "--state", state, "--no-qr"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    (link,) = re.findall(r"http://\S+/app/enroll#\S+", done.stdout)
    return link


@pytest_twisted.inlineCallbacks
def test_a_link_from_an_enrolled_device_enrolls_a_second_one_that_approves(stacks, tmp_path):
    stack = yield stacks()
    first = yield stack.device("alice", "old-phone")
    link = yield threads.deferToThread(add_device_cli, first)
    second = str(tmp_path / "new-phone")
    enrolled = yield threads.deferToThread(auth.enroll, link, second, "new-phone")
    assert enrolled["username"] == "alice"
    with pytest.raises(auth.ApiError):  # works once
        yield threads.deferToThread(auth.enroll, link, str(tmp_path / "third"), "third")
    login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
    request = yield threads.deferToThread(first_request, second)
    yield threads.deferToThread(auth.answer, second, request["txid"], "approve")
    assert (yield login).code == "Access-Accept"


@pytest_twisted.inlineCallbacks
def test_no_link_without_the_signature_of_an_active_device(stacks, tmp_path):
    stack = yield stacks()
    state = yield stack.device("alice", "phone")
    url = stack.config.approval.public_url + "/v1/device/enrollment"
    # no device signature at all, and a forged one
    bare = yield threads.deferToThread(requests.post, url, json={}, timeout=10)
    assert bare.status_code == 401
    with auth.DeviceClient(state) as client:
        device_id = client.state.device_id
    forged = yield threads.deferToThread(
        requests.post, url, json={}, timeout=10,
        headers={"X-Device-Id": device_id, "X-Timestamp": str(int(time.time())),
                 "X-Nonce": "n" * 22, "X-Signature": "A" * 86})
    assert forged.status_code == 401
    # a revoked device gets nothing either
    store = SQLiteStore(stack.config.approval.database)
    try:
        store.revoke_device(device_id, time.time())
    finally:
        store.close()

    def ask():
        with auth.DeviceClient(state) as client:
            return client.device_link()

    with pytest.raises(auth.ApiError) as refused:
        yield threads.deferToThread(ask)
    assert refused.value.status in (401, 403)


@pytest_twisted.inlineCallbacks
def test_a_device_of_another_user_gets_no_link_for_alice(stacks, tmp_path):
    stack = yield stacks()
    alice = yield stack.device("alice", "phone")
    bob = yield stack.device("bob", "phone")
    url = stack.config.approval.public_url + "/v1/device/enrollment"
    alice_id = auth.load_state(alice)[0].device_id
    _, bob_key = auth.load_state(bob)
    path = urlsplit(url).path

    def signed(device_id):
        return requests.post(url, data=b"{}", timeout=10, headers={
            "Content-Type": "application/json",
            **crypto.device_headers(bob_key, device_id, "POST", path, b"{}")})

    # bob's key signing a request that names alice's device: refused; the same
    # request naming bob's own device is accepted (so the refusal is the signature's)
    stolen = yield threads.deferToThread(signed, alice_id)
    assert stolen.status_code == 401
    own = yield threads.deferToThread(signed, auth.load_state(bob)[0].device_id)
    assert own.status_code == 201
    # bob's own device signing: the link is bob's, never alice's
    link = yield threads.deferToThread(add_device_cli, bob)
    enrolled = yield threads.deferToThread(auth.enroll, link, str(tmp_path / "b2"), "bob-2")
    assert enrolled["username"] == "bob"
    store = SQLiteStore(stack.config.approval.database)
    try:
        assert [d.id for d in store.devices("alice")] == [alice_id]
        assert len(store.devices("bob")) == 2
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_revoking_the_device_ends_the_link_it_made(stacks, tmp_path):
    """A stolen phone's "add a device" link must not outlive the phone's revocation."""
    stack = yield stacks()
    phone = yield stack.device("alice", "stolen-phone")
    link = yield threads.deferToThread(add_device_cli, phone)
    device_id = auth.load_state(phone)[0].device_id
    revoke = yield threads.deferToThread(
        subprocess.run, [sys.executable, "-m", "pushproxy.cli", "devices", "revoke", device_id,
                         "--config", str(stack.config_path)],
        capture_output=True, text=True, timeout=60)
    assert revoke.returncode == 0, revoke.stderr
    assert "ended 1 open enrollment link(s) of alice" in revoke.stdout
    with pytest.raises(auth.ApiError):
        yield threads.deferToThread(auth.enroll, link, str(tmp_path / "thief"), "thief")
    store = SQLiteStore(stack.config.approval.database)
    try:
        assert store.devices("alice") == []  # active ones: none, and no thief's
    finally:
        store.close()
