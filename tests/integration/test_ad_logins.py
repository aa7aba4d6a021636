"""Issue 18: AD login names and one canonical identity, against a real Samba AD DC.

    radclient / ldapwhoami --> pushproxy --LDAPS (CA verified)--> samba (CORP.EXAMPLE)
                                  `--> built-in approval service <-- CLI authenticator

``alice``, ``ALICE``, ``CORP\\alice`` and ``alice@corp.example`` are one account:
one enrolled device, one fatigue limit, one lock, and the audit trail names
``alice`` whatever was typed. ``alice@alt.example`` is another account
(alicia's UPN), and a name for a domain the proxy does not serve is refused
with ``unknown_domain`` before any push.
"""

from __future__ import annotations

import shutil
import ssl
import textwrap
import types

import ldap3

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.admin import ad_account, resolve_account
from pushproxy.approval import authenticator as auth
from tests.integration import folding
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import Stack, first_request, login_attrs
from tests.integration.test_ldap_front import Front, front_section
from tests.radsec_pki import TestCA

ALICE_SPELLINGS = ("alice", "ALICE", "CORP\\alice", "alice@corp.example")
AD_FILTER = "(&(objectClass=user)(sAMAccountName={username}))"


def ad_ldap(dc) -> str:
    """The ``ldap:`` lines an AD deployment adds: the CA, nested groups, the domains."""
    return textwrap.dedent(f"""\
        ca_file: {dc.ca_file}
        group_membership: ad_nested
        active_directory:
          domains:
            - netbios: CORP
              base: "DC=corp,DC=example"
              upn_suffixes: [corp.example, alt.example]
        """)


def directory(dc, tmp_path):
    """The Samba DC as `harness.write_config` and `Front` read a directory; a front-end cert."""
    ca = TestCA(tmp_path, "Front CA")
    ca.issue("server", cn="localhost", dns=["localhost"], ips=["127.0.0.1"], server=True)
    return types.SimpleNamespace(
        url=dc.ldaps_url, service_dn=dc.service_dn, service_password=dc.service_password,
        people_dn="CN=Users,DC=corp,DC=example", group_dn=dc.group_dn,
        directory=tmp_path, ca_file=str(ca.path))


@pytest.fixture
def ad_stacks(samba_dc, tmp_path):
    """Starts daemons against the Samba DC with ``ad_stacks(**kw)`` (`Stack` keywords)."""
    running = []
    adapter = directory(samba_dc, tmp_path)

    @pytest_twisted.inlineCallbacks
    def make(push="no_device: reject\nlimits: {max_pushes: 100, max_denials: 100}", **kw):
        stack = yield Stack(tmp_path, adapter, push_extra=push, ldap_extra=ad_ldap(samba_dc),
                            user_filter=AD_FILTER, **kw).start()
        stack.adapter = adapter
        running.append(stack)
        return stack

    yield make
    for stack in running:
        if stack.daemon.ports:
            pytest_twisted.blockon(stack.stop())


def login(stack, dc, user, password_of="alice"):
    return radclient(stack.radius, SECRET,
                     login_attrs(user=user, password=dc.password(password_of)), timeout=30)


def pushes(stack) -> int:
    return stack.daemon.counters.get("pushes_requested")


@pytest_twisted.inlineCallbacks
def test_four_spellings_log_in_with_one_device_and_one_audited_account(ad_stacks, samba_dc):
    """Each AD spelling of alice gets its push on alice's one device; the audit says alice."""
    stack = yield ad_stacks()
    state = yield stack.device("alice")
    for spelling in ALICE_SPELLINGS:
        pending = login(stack, samba_dc, spelling)
        request = yield threads.deferToThread(first_request, state)
        assert request["username"] == "alice", spelling
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        result = yield pending
        assert result.code == "Access-Accept", spelling
    events = stack.audit()
    assert [(e["user"], e["reason"]) for e in events] == [("alice", "push_approved")] * 4


@pytest_twisted.inlineCallbacks
def test_spellings_count_against_one_fatigue_limit(ad_stacks, samba_dc):
    """Three pushes under three spellings use up alice's max_pushes: the fourth gets none."""
    stack = yield ad_stacks(push="no_device: reject\nlimits: {max_pushes: 3, max_denials: 100}")
    state = yield stack.device("alice")
    for spelling in ALICE_SPELLINGS[:3]:
        pending = login(stack, samba_dc, spelling)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "deny")
        assert (yield pending).code == "Access-Reject"
    before = pushes(stack)
    result = yield login(stack, samba_dc, "alice@corp.example")
    assert result.code == "Access-Reject"
    assert pushes(stack) == before == 3
    last = stack.audit()[-1]
    assert (last["user"], last["reason"]) == ("alice", "push_rate_limited")


@pytest_twisted.inlineCallbacks
def test_a_lock_made_under_one_spelling_refuses_the_others(ad_stacks, samba_dc):
    """A fraud report on CORP\\alice's push locks alice: no spelling gets a push after it."""
    stack = yield ad_stacks()
    state = yield stack.device("alice")
    pending = login(stack, samba_dc, "CORP\\alice")
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "fraud")
    assert (yield pending).code == "Access-Reject"
    before = pushes(stack)
    for spelling in ("alice", "ALICE", "alice@corp.example", "Alice@CORP.EXAMPLE"):
        result = yield login(stack, samba_dc, spelling)
        assert result.code == "Access-Reject", spelling
    assert pushes(stack) == before
    reasons = [(e["user"], e["reason"]) for e in stack.audit()[1:]]
    assert reasons == [("alice", "user_locked_after_fraud_report")] * 4


@pytest_twisted.inlineCallbacks
def test_names_for_domains_not_served_are_refused_without_a_push(ad_stacks, samba_dc):
    """EVIL\\alice and alice@evil.example: Reject, audit reason unknown_domain, no push."""
    stack = yield ad_stacks()
    yield stack.device("alice")
    for name in ("EVIL\\alice", "alice@evil.example", "\\alice", "CORP\\"):
        result = yield login(stack, samba_dc, name)
        assert result.code == "Access-Reject", name
    assert pushes(stack) == 0
    assert [e["reason"] for e in stack.audit()] == ["unknown_domain"] * 4
    assert stack.daemon.counters.get("ldap_foreign_domain") == 4


@pytest_twisted.inlineCallbacks
def test_an_alternate_upn_suffix_names_its_own_account(ad_stacks, samba_dc):
    """alice@alt.example is alicia (her UPN), never alice; bob@alt.example is bob."""
    stack = yield ad_stacks()
    yield stack.device("alice")
    result = yield login(stack, samba_dc, "alice@alt.example", password_of="alicia")
    assert result.code == "Access-Reject"  # alicia is not in vpn-users (alice is)
    result = yield login(stack, samba_dc, "alice@alt.example", password_of="alice")
    assert result.code == "Access-Reject"  # alice's password is not alicia's
    result = yield login(stack, samba_dc, "bob@alt.example", password_of="bob")
    assert result.code == "Access-Reject"
    assert [(e["user"], e["reason"]) for e in stack.audit()] == [
        ("alicia", "not_in_required_group"), ("alice@alt.example", "bad_credentials"),
        ("bob", "no_enrolled_device")]


def test_enrollment_resolves_every_spelling_to_the_canonical_account(samba_dc, tmp_path):
    """`pushproxy enroll` keys a device on the account each spelling names."""
    from tests.integration.harness import load, write_config

    config = load(write_config(tmp_path, directory(samba_dc, tmp_path),
                               ldap_extra=ad_ldap(samba_dc), user_filter=AD_FILTER))
    for spelling in ALICE_SPELLINGS + ("Alice@Corp.Example",):
        assert resolve_account(config, spelling) == ("alice", None), spelling
    # alicia's entry (not in vpn-users), not alice's (in it through nested groups)
    account, why = resolve_account(config, "alice@alt.example")
    assert account is None and "in none of ldap.required_groups" in why
    assert resolve_account(config, "CORP\\bob") == ("bob", None)
    account, why = resolve_account(config, "EVIL\\alice")
    assert account is None and "not in ldap.active_directory" in why
    # devices, bypass and unlock act on the same key
    assert ad_account(config, "alice@corp.example") == ("alice", None)
    assert ad_account(config, "eu\\alice")[0] is None
    # Group rollouts: members through nested groups (and dora, whose primary group
    # it is: test_rollout_ad.py), each under the key its logins use.
    from pushproxy.rollout.directory import RolloutDirectory, UserStatus

    rollout = RolloutDirectory(config.ldap)
    try:
        assert sorted(rollout.members(samba_dc.group_dn("vpn-users"))) == \
            ["alice", "bob", "dora"]
        found = rollout.user("CORP\\alice")
        assert (found.status, found.account) == (UserStatus.FOUND, "alice")
        assert rollout.user("EVIL\\alice").status is UserStatus.UNKNOWN
    finally:
        rollout.close()


@pytest.fixture
def ad_fronts(ad_stacks, samba_dc, tmp_path):
    @pytest_twisted.inlineCallbacks
    def make(**extra):
        stack = yield ad_stacks(extra=front_section(directory(samba_dc, tmp_path), **extra))
        return Front(stack, stack.adapter, tmp_path)

    return make


def bound(code: int, err: str) -> bool:
    """ldapwhoami's bind succeeded: 0, or the DC's refusal of the WhoAmI operation after it.

    Samba 4.17 does not implement WhoAmI (RFC 4532); a Windows DC does. The front
    end forwards it after the bind, so Samba answers protocolError (2) on a
    bound connection, and ldapwhoami exits 1.
    """
    return code == 0 or ("1.3.6.1.4.1.4203.1.11.3) not supported" in err
                         and "Invalid credentials" not in err)


@pytest.mark.skipif(shutil.which("ldapwhoami") is None, reason="ldap-utils not installed")
@pytest_twisted.inlineCallbacks
def test_ldap_front_binds_with_upn_and_domain_user(ad_fronts, samba_dc):
    """ldapwhoami -D alice@corp.example: approve -> bound; -D CORP\\alice: deny -> 49."""
    front = yield ad_fronts()
    state = yield front.stack.device("alice")
    password = samba_dc.password("alice")
    pending = front.run("ldapwhoami", "-D", "alice@corp.example", "-w", password)
    request = yield threads.deferToThread(first_request, state)
    assert request["username"] == "alice"
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, out, err = yield pending
    assert bound(code, err), (code, err)
    pending = front.run("ldapwhoami", "-D", "CORP\\alice", "-w", password)
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "deny")
    code, out, err = yield pending
    assert code == 49, err
    # The search a bound client makes works through the front end after an approval.
    pending = front.run("ldapsearch", "-LLL", "-D", "CORP\\alice", "-w", password, "-b",
                        "DC=corp,DC=example", "(sAMAccountName=alice)", "userPrincipalName")
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, out, err = yield pending
    assert code == 0 and "userPrincipalName: alice@corp.example" in out, err
    # A plain sAMAccountName goes upstream as CORP\alice.
    pending = front.run("ldapwhoami", "-D", "ALICE", "-w", password)
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, out, err = yield pending
    assert bound(code, err), (code, err)
    assert [(e["user"], e["reason"]) for e in front.audit()] == [
        ("alice", "push_approved"), ("alice", "push_denied"), ("alice", "push_approved"),
        ("alice", "push_approved")]


@pytest.mark.skipif(shutil.which("ldapwhoami") is None, reason="ldap-utils not installed")
@pytest_twisted.inlineCallbacks
def test_ldap_front_refuses_foreign_domains_and_passes_ad_named_service_accounts(
        ad_fronts, samba_dc):
    """EVIL\\alice gets 49 and unknown_domain; the service account bound by UPN gets no push."""
    front = yield ad_fronts()
    yield front.stack.device("alice")
    code, out, err = yield front.run("ldapwhoami", "-D", "EVIL\\alice", "-w",
                                     samba_dc.password("alice"))
    assert code == 49, err
    code, out, err = yield front.run("ldapwhoami", "-D", "svc-pushproxy@corp.example", "-w",
                                     samba_dc.service_password)
    assert bound(code, err), (code, err)
    assert front.counter("pushes_requested") == 0
    assert [e["reason"] for e in front.audit()] == ["unknown_domain"]
    assert front.counter("ldap_foreign_domain") == 1
    assert front.counter("ldap_front_binds_passed", kind="service") == 1


# The three ways a spelling reaches the search: plain, down-level, UPN.
FORMS = (("sAMAccountName", "", "{}"), ("sAMAccountName", "", "CORP\\{}"),
         ("userPrincipalName", "@corp.example", "{}@corp.example"))
MAX_LOGINS = 150  # radclient runs, bounded; a deterministic sample beyond it
# AD spellings with spaces, dots and mixed forms: each is alice or refused.
AD_HOSTILE = ("CORP\\ alice", "CORP \\alice", "CORP\\alice@corp.example", "alice @corp.example",
              "alice@ corp.example", "alice@corp.example.", "CORP.EXAMPLE\\alice", "alice@CORP",
              "CORP\\\\alice", "CORP\\*", "*@corp.example", "CORP\\al*", "alice\u200b@corp.example")
REFUSED_UNREAD = {"invalid_username", "unknown_domain", "unknown_user", "bad_credentials"}


@pytest.fixture(scope="module")
def ad_folded(samba_dc):
    """Per form, the candidate spellings (issue 8's corpus) the DC resolves to alice's entry."""
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=samba_dc.ca_file)
    server = ldap3.Server(samba_dc.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, samba_dc.service_dn, samba_dc.service_password,
                            auto_bind=True, raise_exceptions=False)
    try:
        return {form: folding.folded_spellings(None, "alice", conn=conn,
                                               base="DC=corp,DC=example",
                                               dn=samba_dc.user_dn("alice"),
                                               attribute=attribute, suffix=suffix)
                for attribute, suffix, form in FORMS}
    finally:
        conn.unbind()


@pytest_twisted.inlineCallbacks
def test_no_spelling_the_dc_folds_onto_alice_is_keyed_on_another_account(ad_stacks, samba_dc,
                                                                         ad_folded):
    """Every name the DC resolves to alice, in every AD form, is alice or refused unread."""
    print({form: len(hits) for form, hits in ad_folded.items()})
    # Samba 4.17 folds ASCII case only (slapd folds dozens more): the scan must see that.
    assert all("Alice" in hits for hits in ad_folded.values()), ad_folded
    names = sorted({form.format(s) for form, hits in ad_folded.items() for s in hits})
    step = max(1, -(-len(names) // MAX_LOGINS))
    names = names[::step] + list(AD_HOSTILE)
    stack = yield ad_stacks(push="no_device: reject\nlimits: {max_pushes: 1000}")
    for name in names:
        assert (yield login(stack, samba_dc, name)).code == "Access-Reject", name
    events = stack.audit()
    assert len(events) == len(names)
    for name, event in zip(names, events):
        # A push (here: no device) only ever for alice; anything else refused unpushed.
        assert (event["user"] == "alice" and event["reason"] == "no_enrolled_device") or \
            event["reason"] in REFUSED_UNREAD, (name, event)
    assert sum(e["reason"] == "no_enrolled_device" for e in events) >= 15


@pytest.fixture
def no_upn_user(samba_dc):
    """dave, added for one test with no userPrincipalName (as scripts create accounts)."""
    from tests.integration.samba_dc import ADMIN_PASSWORD

    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=samba_dc.ca_file)
    server = ldap3.Server(samba_dc.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    admin = ldap3.Connection(server, "administrator@corp.example", ADMIN_PASSWORD,
                             auto_bind=True)
    dn, password = samba_dc.user_dn("dave"), "No-Upn-Here-52"
    assert admin.add(dn, ["top", "person", "organizationalPerson", "user"], {
        "sAMAccountName": "dave", "userAccountControl": "512",
        "unicodePwd": f'"{password}"'.encode("utf-16-le")}), admin.result
    try:
        yield password
    finally:
        admin.delete(dn)
        admin.unbind()


@pytest_twisted.inlineCallbacks
def test_an_account_without_a_upn_logs_in_by_its_implicit_upn(ad_stacks, samba_dc,
                                                            no_upn_user):
    """dave@corp.example finds dave (no UPN stored), as the DC binds it; dave@alt.example not."""
    assert samba_dc.bind("dave@corp.example", no_upn_user).ok  # the DC's own behaviour
    stack = yield ad_stacks()
    for name in ("dave@corp.example", "dave@alt.example", "CORP\\dave"):
        result = yield radclient(stack.radius, SECRET,
                                 login_attrs(user=name, password=no_upn_user), timeout=30)
        assert result.code == "Access-Reject", name  # dave is in no group
    assert [(e["user"], e["reason"]) for e in stack.audit()] == [
        ("dave", "not_in_required_group"), ("dave@alt.example", "unknown_user"),
        ("dave", "not_in_required_group")]
