"""The command-line authenticator against the real API, service and store.

Real `ApprovalService` + `SQLiteStore(":memory:")` + the real Site on
127.0.0.1. The authenticator is synchronous (`requests`), so it runs in a
thread (`deferToThread`) while the global reactor keeps serving; logins are
created the way the engine does, through the provider's `request_approval`.
"""

import io
import os
import stat
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from pushproxy.approval import authenticator as auth
from pushproxy.approval import authenticator_cli as auth_cli
from pushproxy.approval.api import build_site
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalService, new_enrollment
from pushproxy.approval.store import SQLiteStore
from pushproxy.approval.webpush import VapidKeys
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest

MAX_BODY = 16384


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def answered(d):
    """Whether a login's Deferred has its result (waiting on the answer's Deferred,
    it is ``called`` but has none yet)."""
    return d.called and not isinstance(d.result, defer.Deferred)


class World:
    """The server side of one test: store, service, listening site, open logins."""

    def __init__(self, reactor, **service_options):
        self.reactor = reactor
        self.store = SQLiteStore(":memory:")
        self.service = ApprovalService(store=AsyncStore.inline(self.store), reactor=reactor,
                                       counters=Counters(),
                                       vapid_public_key=VapidKeys.generate().public_key_b64url,
                                       **service_options)
        self.port = reactor.listenTCP(0, build_site(self.service, max_body=MAX_BODY,
                                                    reactor=reactor), interface="127.0.0.1")
        self.base_url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.logins = []
        self._n = 0

    def link(self, username="alice", ttl=900.0, now=None):
        """A fresh one-time enrollment link, as ``pushproxy enroll`` prints it."""
        now = time.time() if now is None else now
        return new_enrollment(self.store, username, self.base_url, ttl, now)

    def login(self, username="alice", timeout=60.0, **options):
        """Start a login the way the engine does; returns (request, provider Deferred).

        ``options``: more `ApprovalRequest` fields (user_verification, ...)."""
        self._n += 1
        now = time.time()
        request = ApprovalRequest(txid=f"tx{self._n}-{os.urandom(4).hex()}", username=username,
                                  application="vpn-gw-1", client_ip="198.51.100.7", nas="gw1",
                                  created=now, expires=now + timeout, **options)
        d = self.service.request_approval(request)
        self.logins.append(d)
        return request, d

    def close(self):
        for d in self.logins:
            if not d.called:
                d.cancel()  # the engine's timeout: withdraws the transaction
            d.addErrback(lambda f: f.trap(defer.CancelledError))
        pytest_twisted.blockon(defer.maybeDeferred(self.port.stopListening))
        self.store.close()


@pytest.fixture
def world(reactor):
    w = World(reactor)
    yield w
    w.close()


def in_thread(f, *args, **kwargs):
    """Run the blocking authenticator off the reactor thread, with a bound on its time."""
    d = threads.deferToThread(f, *args, **kwargs)
    from twisted.internet import reactor

    return d.addTimeout(30, reactor)


async def enrolled(world, tmp_path, name="cli-test", username="alice"):
    state_dir = str(tmp_path / f"state-{name}")
    state = await in_thread(auth.enroll, world.link(username), state_dir, name)
    return state_dir, state


# -- enrollment


@pytest_twisted.ensureDeferred
async def test_enroll_saves_private_state(world, tmp_path):
    state_dir, state = await enrolled(world, tmp_path)
    assert state["username"] == "alice"
    assert state["base_url"] == world.base_url
    device = world.store.device(state["device_id"])
    assert device.username == "alice" and device.name == "cli-test"
    assert device.public_key == state["public_key"]
    assert device.push_subscription is None
    assert stat.S_IMODE(os.stat(state_dir).st_mode) & 0o077 == 0
    for name in (auth.STATE_FILE, auth.KEY_FILE):
        assert stat.S_IMODE(os.stat(os.path.join(state_dir, name)).st_mode) == 0o600
    with open(os.path.join(state_dir, auth.KEY_FILE), "rb") as f:
        assert f.read().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8


@pytest_twisted.ensureDeferred
async def test_used_link_is_refused_and_leaves_no_key(world, tmp_path):
    link = world.link()
    await in_thread(auth.enroll, link, str(tmp_path / "first"), "first")
    second = tmp_path / "second"
    with pytest.raises(auth.ApiError) as info:
        await in_thread(auth.enroll, link, str(second), "second")
    assert (info.value.status, info.value.code) == (403, "invalid_enrollment")
    assert not (second / auth.KEY_FILE).exists() and not (second / auth.STATE_FILE).exists()


@pytest_twisted.ensureDeferred
async def test_expired_link_is_refused(world, tmp_path):
    link = world.link(ttl=60, now=time.time() - 120)
    with pytest.raises(auth.ApiError) as info:
        await in_thread(auth.enroll, link, str(tmp_path / "late"), "late")
    assert (info.value.status, info.value.code) == (403, "invalid_enrollment")
    assert world.store.devices("alice") == []


@pytest_twisted.ensureDeferred
async def test_unknown_token_is_refused(world, tmp_path):
    with pytest.raises(auth.ApiError) as info:
        await in_thread(auth.enroll, world.base_url + "/app/enroll#" + "A" * 43,
                        str(tmp_path / "guess"), "guess")
    assert info.value.status == 403


@pytest_twisted.ensureDeferred
async def test_enroll_refuses_to_overwrite_a_device(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    with pytest.raises(auth.AuthenticatorError, match="already holds a device"):
        await in_thread(auth.enroll, world.link(), state_dir, "again")


# -- answering logins


@pytest_twisted.ensureDeferred
async def test_pending_then_approve_fires_the_provider_approved(world, tmp_path):
    state_dir, state = await enrolled(world, tmp_path)
    request, login = world.login()
    entries = await in_thread(auth.pending, state_dir)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["txid"] == request.txid
    assert (entry["username"], entry["application"], entry["client_ip"], entry["nas"]) == \
        ("alice", "vpn-gw-1", "198.51.100.7", "gw1")
    assert 50 < entry["seconds_left"] <= 60
    assert not answered(login)
    result = await in_thread(auth.answer, state_dir, request.txid, "approve")
    assert result == {"status": "recorded"}
    push = await login
    assert push.status is PushStatus.APPROVED
    assert push.device == state["device_id"]
    assert await in_thread(auth.pending, state_dir) == []


@pytest.mark.parametrize("decision,status", [("deny", PushStatus.DENIED),
                                             ("fraud", PushStatus.FRAUD)])
@pytest_twisted.ensureDeferred
async def test_deny_and_fraud_fire_the_provider(world, tmp_path, decision, status):
    state_dir, _ = await enrolled(world, tmp_path)
    request, login = world.login()
    assert await in_thread(auth.answer, state_dir, request.txid, decision) == \
        {"status": "recorded"}
    assert (await login).status is status


@pytest_twisted.ensureDeferred
async def test_second_answer_is_refused_with_the_servers_message(world, tmp_path):
    phone, _ = await enrolled(world, tmp_path, "phone")
    laptop, _ = await enrolled(world, tmp_path, "laptop")
    request, login = world.login()

    def both():
        with auth.DeviceClient(phone) as a, auth.DeviceClient(laptop) as b:
            entry = b.pending(0)[0][0]
            a.answer(a.pending(0)[0][0], "approve")
            b.answer(entry, "deny")  # too late: the phone won

    with pytest.raises(auth.ApiError) as info:
        await in_thread(both)
    assert (info.value.status, info.value.code) == (409, "already_decided")
    assert "already answered" in str(info.value)
    assert (await login).status is PushStatus.APPROVED


@pytest_twisted.ensureDeferred
async def test_another_users_request_is_not_visible(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    request, _ = world.login(username="bob")
    assert await in_thread(auth.pending, state_dir) == []
    with pytest.raises(auth.AuthenticatorError, match="no open request"):
        await in_thread(auth.answer, state_dir, request.txid, "approve")


@pytest_twisted.ensureDeferred
async def test_withdrawn_request_cannot_be_answered(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    request, login = world.login()
    login.cancel()  # the engine timed out
    login.addErrback(lambda f: f.trap(defer.CancelledError))
    assert await in_thread(auth.pending, state_dir) == []
    with pytest.raises(auth.AuthenticatorError, match="no open request"):
        await in_thread(auth.answer, state_dir, request.txid, "approve")


@pytest_twisted.ensureDeferred
async def test_long_poll_wakes_within_a_second(world, tmp_path, reactor):
    state_dir, _ = await enrolled(world, tmp_path)
    started = time.monotonic()
    poll = in_thread(auth.pending, state_dir, 20)
    await task.deferLater(reactor, 0.5, lambda: None)
    assert not poll.called  # really waiting
    created = time.monotonic()
    request, _ = world.login()
    entries = await poll
    woke = time.monotonic()
    assert [e["txid"] for e in entries] == [request.txid]
    assert woke - created < 1.0
    assert woke - started < 5.0


@pytest_twisted.ensureDeferred
async def test_client_leaving_a_long_poll_ends_the_services_wait(world, tmp_path, reactor):
    state_dir, state = await enrolled(world, tmp_path)

    def give_up_early():
        with auth.DeviceClient(state_dir) as device:
            # The read timeout makes requests drop the connection mid-poll.
            device.request("GET", "/v1/device/pending?wait=20", read_timeout=1.0)

    leaving = in_thread(give_up_early)
    await task.deferLater(reactor, 0.5, lambda: None)
    assert world.service._pollers  # the poll is really waiting in the service
    with pytest.raises(auth.NetworkError):
        await leaving
    for _ in range(100):  # the server notices the closed connection promptly
        if not world.service._pollers:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert not world.service._pollers  # private, but it is what "stopped waiting" means


@pytest_twisted.ensureDeferred
async def test_revoked_device_is_refused(world, tmp_path):
    state_dir, state = await enrolled(world, tmp_path)
    world.store.revoke_device(state["device_id"], time.time())
    with pytest.raises(auth.ApiError) as info:
        await in_thread(auth.pending, state_dir)
    assert (info.value.status, info.value.code) == (401, "unauthenticated")


@pytest_twisted.ensureDeferred
async def test_group_readable_key_is_refused(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    os.chmod(os.path.join(state_dir, auth.KEY_FILE), 0o640)
    with pytest.raises(auth.AuthenticatorError, match="chmod 600"):
        await in_thread(auth.pending, state_dir)


# -- the command line


def run_cli(*argv):
    """main() in a thread; returns (exit code, stdout, stderr) of the call."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = auth_cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest_twisted.ensureDeferred
async def test_cli_enroll_pending_approve(world, tmp_path):
    state_dir = str(tmp_path / "cli")
    code, out, _ = await in_thread(run_cli, "enroll", world.link(), "--state", state_dir,
                                   "--name", "my cli")
    assert code == 0 and "alice" in out
    code, out, _ = await in_thread(run_cli, "approve", "--state", state_dir)
    assert code == 1  # nothing to approve
    request, login = world.login()
    code, out, _ = await in_thread(run_cli, "pending", "--state", state_dir)
    assert code == 0 and request.txid in out and "198.51.100.7" in out and "vpn-gw-1" in out
    code, out, err = await in_thread(run_cli, "approve", "--state", state_dir)
    assert code == 0, err
    assert "recorded" in out
    assert (await login).status is PushStatus.APPROVED


@pytest_twisted.ensureDeferred
async def test_cli_deny_needs_a_txid_when_several_are_open(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    first, login1 = world.login()
    second, login2 = world.login()
    code, _, err = await in_thread(run_cli, "deny", "--state", state_dir)
    assert code == 1 and first.txid in err and second.txid in err
    code, _, _ = await in_thread(run_cli, "deny", second.txid, "--fraud", "--state", state_dir)
    assert code == 0
    assert (await login2).status is PushStatus.FRAUD
    assert not answered(login1)


@pytest_twisted.ensureDeferred
async def test_watch_auto_answers_new_requests(world, tmp_path, reactor):
    state_dir, _ = await enrolled(world, tmp_path)
    out, err = io.StringIO(), io.StringIO()

    def watching():
        with auth.DeviceClient(state_dir) as device:
            return auth_cli.watch(device, auto="approve", count=2, timeout=20, out=out, err=err)

    watcher = in_thread(watching)
    await task.deferLater(reactor, 0.5, lambda: None)
    _, login1 = world.login()
    assert (await login1).status is PushStatus.APPROVED
    _, login2 = world.login()
    assert (await login2).status is PushStatus.APPROVED
    assert await watcher == 0
    assert out.getvalue().count("-> approve: recorded") == 2


@pytest_twisted.ensureDeferred
async def test_watch_asks_on_stdin(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    _, login = world.login()
    out = io.StringIO()

    def watching():
        with auth.DeviceClient(state_dir) as device:
            return auth_cli.watch(device, count=1, timeout=20, stdin=io.StringIO("what?\nn\n"),
                              out=out, err=io.StringIO())

    assert await in_thread(watching) == 0
    assert (await login).status is PushStatus.DENIED
    assert out.getvalue().count("approve this login?") == 2


@pytest_twisted.ensureDeferred
async def test_watch_retries_while_the_server_is_down_and_stops_at_timeout(world, tmp_path):
    state_dir, _ = await enrolled(world, tmp_path)
    await world.port.stopListening()
    err = io.StringIO()
    sleeps = []

    def watching():
        with auth.DeviceClient(state_dir) as device:
            return auth_cli.watch(device, auto="approve", count=1, timeout=4.5, out=io.StringIO(),
                              err=err, sleep=lambda s: (sleeps.append(s), time.sleep(s)))

    assert await in_thread(watching) == 1  # count not reached
    assert "cannot reach" in err.getvalue() and "retrying" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert sleeps[:2] == [1.0, 2.0]  # backing off


# -- https with a private CA


def _private_ca_and_server_cert(directory):
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pushproxy test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_pem = (cert.public_bytes(serialization.Encoding.PEM)
                  + key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(ca_path), server_pem


@pytest_twisted.ensureDeferred
async def test_https_with_a_private_ca(world, tmp_path, reactor):
    from twisted.internet import ssl

    ca_path, server_pem = _private_ca_and_server_cert(tmp_path)
    site = build_site(world.service, max_body=MAX_BODY, reactor=reactor)
    port = reactor.listenSSL(0, site, ssl.PrivateCertificate.loadPEM(server_pem).options(),
                             interface="127.0.0.1")
    try:
        base = f"https://127.0.0.1:{port.getHost().port}"
        link = new_enrollment(world.store, "alice", base, 900, time.time())
        with pytest.raises(auth.NetworkError, match="--ca-file"):
            await in_thread(auth.enroll, link, str(tmp_path / "untrusted"), "x")
        state_dir = str(tmp_path / "trusted")
        state = await in_thread(auth.enroll, link, state_dir, "x", verify=ca_path)
        assert state["ca_file"] == ca_path
        request, login = world.login()
        # The CA given at enrollment is remembered for later commands.
        assert [e["txid"] for e in await in_thread(auth.pending, state_dir)] == [request.txid]
        with pytest.raises(auth.NetworkError):
            await in_thread(auth.pending, state_dir, 0, True)  # system CAs only: refused
        await in_thread(auth.answer, state_dir, request.txid, "approve", False)  # --insecure
        assert (await login).status is PushStatus.APPROVED
    finally:
        await port.stopListening()
