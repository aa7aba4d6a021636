"""AD account states: AD's bind diagnostics, the entry's flags and MS-CHAP-Error become one
typed state each (hostile or odd input never one), each its own audit reason with no push,
and the LDAP front end answers with AD's own ``data`` code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.adstate import (AD_DATA, AccountState, BindRefusal, ad_diagnostic, entry_state,
                               mschap_error_state, parse_bind_diagnostic)
from pushproxy.decision import (Decision, Outcome, PrimaryResult, PrimaryStatus, Reason,
                                primary_decision)
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.server import bind_result

AD = "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {}, v4563"
SAMBA = "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data {}, v1db1"
NOW = 1_800_000_000.0  # 2027-01-15


@pytest.mark.parametrize("data,state,proved", [
    ("52e", None, False),
    ("525", None, False),
    ("530", AccountState.LOGON_HOURS, True),
    ("531", AccountState.LOGON_WORKSTATION, True),
    ("532", AccountState.PASSWORD_EXPIRED, True),
    ("533", AccountState.ACCOUNT_DISABLED, True),
    ("701", AccountState.ACCOUNT_EXPIRED, True),
    ("773", AccountState.MUST_CHANGE_PASSWORD, True),
    ("775", AccountState.ACCOUNT_LOCKED, False),
])
@pytest.mark.parametrize("fmt", [AD, SAMBA])
def test_each_ad_data_code_is_its_own_state_and_only_775_is_said_without_the_password(
        fmt, data, state, proved):
    refusal = parse_bind_diagnostic(fmt.format(data))
    assert refusal == BindRefusal(int(data, 16), state, proved)


@pytest.mark.parametrize("message", [
    "",
    "Invalid credentials",  # OpenLDAP
    "data 533",  # no AD mark: another server's words
    AD.format("533") + " data 775",  # two different codes: ambiguous
    AD.format("5330"),  # not a code we know
    AD.format("53"),
    AD.format("５３３"),  # fullwidth digits are not hex
    AD.format("533x"),
    AD.replace("data {}", "metadata 533").format(),
    " " * 600 + AD.format("533"),  # past the head that is read
    AD.format("533").replace("AcceptSecurityContext", "Accept\u200bSecurityContext"),
    "\x00" + AD.format("533")[:20],
])
def test_hostile_or_odd_diagnostics_are_a_plain_wrong_password(message):
    assert parse_bind_diagnostic(message).state is None


def test_the_same_code_twice_is_still_that_code_and_a_huge_message_costs_only_its_head():
    assert parse_bind_diagnostic(AD.format("773") + " data 773").state \
        is AccountState.MUST_CHANGE_PASSWORD
    assert parse_bind_diagnostic(AD.format("533") + "x" * 10_000_000).state \
        is AccountState.ACCOUNT_DISABLED


def test_ad_diagnostic_round_trips_every_state():
    for state in AccountState:
        assert parse_bind_diagnostic(ad_diagnostic(state)).state is state
    assert {s for s, _ in AD_DATA.values() if s} == set(AccountState)


def filetime(posix: float) -> str:
    return str(int(posix * 10_000_000) + 116444736000000000)


@pytest.mark.parametrize("attrs,state", [
    ({}, None),
    ({"userAccountControl": ["512"]}, None),
    ({"userAccountControl": ["514"]}, AccountState.ACCOUNT_DISABLED),
    ({"useraccountcontrol": ["-2147483134"]}, AccountState.ACCOUNT_DISABLED),  # signed form
    ({"userAccountControl": ["512"], "msDS-User-Account-Control-Computed": ["16"]},
     AccountState.ACCOUNT_LOCKED),
    ({"msDS-User-Account-Control-Computed": ["8388608"]}, AccountState.PASSWORD_EXPIRED),
    ({"userAccountControl": ["512"], "pwdLastSet": ["0"]}, AccountState.MUST_CHANGE_PASSWORD),
    ({"userAccountControl": ["66048"], "pwdLastSet": ["0"]}, None),  # password never expires
    ({"accountExpires": ["0"]}, None),
    ({"accountExpires": ["9223372036854775807"]}, None),
    ({"accountExpires": [filetime(NOW - 1)]}, AccountState.ACCOUNT_EXPIRED),
    ({"accountExpires": [filetime(NOW + 60)]}, None),
    ({"userAccountControl": ["514"], "msDS-User-Account-Control-Computed": ["16"]},
     AccountState.ACCOUNT_DISABLED),  # disabled outranks locked
    # lockoutTime alone: AD leaves it set after the lockout ended (only the DC's flag counts)
    ({"userAccountControl": ["512"], "lockoutTime": ["134406681288313840"]}, None),
    # odd values: not one plain integer -> ignored
    ({"userAccountControl": ["0x2"]}, None),
    ({"userAccountControl": ["514", "512"]}, None),
    ({"userAccountControl": ["５１４"]}, None),
    ({"userAccountControl": ["9" * 40]}, None),
    ({"userAccountControl": [""]}, None),
    ({"userAccountControl": ["18446744073709551618"]}, AccountState.ACCOUNT_DISABLED),
    ({"pwdLastSet": ["00"]}, AccountState.MUST_CHANGE_PASSWORD),
    ({"pwdLastSet": ["-1"]}, None),
    ({"accountExpires": ["-5"]}, None),
])
def test_entry_flags_give_a_state_and_odd_values_none(attrs, state):
    assert entry_state(attrs, NOW) is state


def test_account_expiry_follows_the_clock_passed_in():
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(NOW)
    attrs = {"accountExpires": [filetime(NOW + 30)]}
    assert entry_state(attrs, clock.seconds()) is None
    clock.advance(30)
    assert entry_state(attrs, clock.seconds()) is AccountState.ACCOUNT_EXPIRED


@pytest.mark.parametrize("value,state", [
    (b"\x01E=648 R=0 C=00112233445566778899aabbccddeeff V=3 M=Password expired",
     AccountState.PASSWORD_EXPIRED),
    (b"\x01E=647 R=0 C=00 V=3 M=Account disabled", AccountState.ACCOUNT_DISABLED),
    (b"\x01E=647 R=0 C=00 V=3 M=Account locked out", AccountState.ACCOUNT_LOCKED),  # FreeRADIUS
    (b"\x01E=691 R=0 C=00 V=3 M=Account disabled", AccountState.ACCOUNT_DISABLED),  # FreeRADIUS
    (b"\x01E=646 R=0 C=00 V=3", AccountState.LOGON_HOURS),
    (b"E=648 R=0 V=3", AccountState.PASSWORD_EXPIRED),  # no ident octet
    (b"\x01E=691 R=1 C=00 V=3 M=Authentication failed", None),
    (b"\x01E=649 R=0", None),
    (b"\x01E=709 R=0 M=Password change failed", None),
    (b"", None),
    (b"\x01", None),
    (b"\x01E=6480 R=0", None),
    (b"\x01XE=648", None),
    (b"\x01E=\xff\xfe648", None),
    (b"\x01" + b" " * 300 + b"E=648", None),  # past the head that is read
])
def test_mschap_errors_name_the_state_the_upstream_means(value, state):
    assert mschap_error_state(value) is state


@pytest.mark.parametrize("state", list(AccountState))
def test_each_state_is_its_own_reject_reason(state):
    result = PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED, account_state=state,
                           password_proved=True)
    decision = primary_decision(result)
    assert decision.outcome is Outcome.REJECT and decision.reason.value == state.value


def test_a_refusal_without_a_state_is_a_wrong_password_and_locked_counts_as_one():
    assert primary_decision(PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED)).reason \
        is Reason.BAD_CREDENTIALS
    locked = PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED,
                           account_state=AccountState.ACCOUNT_LOCKED)
    assert locked.wrong_password
    proved = PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED,
                           account_state=AccountState.MUST_CHANGE_PASSWORD, password_proved=True)
    assert not proved.wrong_password
    assert PrimaryResult(PrimaryStatus.BAD_CREDENTIALS).wrong_password


def test_the_ldap_front_end_answers_a_state_with_ads_own_diagnostic_and_others_vaguely():
    code, text = bind_result(Decision.of(Reason.MUST_CHANGE_PASSWORD))
    assert code == ber.INVALID_CREDENTIALS and "data 773," in text
    assert parse_bind_diagnostic(text).state is AccountState.MUST_CHANGE_PASSWORD
    assert bind_result(Decision.of(Reason.ACCOUNT_DISABLED))[1] == ad_diagnostic(
        AccountState.ACCOUNT_DISABLED)
    assert bind_result(Decision.of(Reason.BAD_CREDENTIALS)) == (49, "Login denied")
    assert bind_result(Decision.of(Reason.PUSH_DENIED)) == (49, "Login denied")


class StateDirectory:
    """A directory answering every login with one account state (records the calls)."""

    def __init__(self, state, proved):
        self.state, self.proved, self.calls = state, proved, []

    def authenticate(self, username, password):
        from twisted.internet import defer

        self.calls.append(username)
        return defer.succeed(PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED,
                                           account_state=self.state,
                                           password_proved=self.proved))


@pytest.mark.parametrize("state,proved,throttled", [
    (AccountState.ACCOUNT_LOCKED, False, True),  # AD says 775 to any password: a guess
    (AccountState.MUST_CHANGE_PASSWORD, True, False),  # the user knows the password
])
def test_only_states_said_without_the_password_count_towards_the_password_throttle(
        state, proved, throttled):
    from pushproxy.password_throttle import PasswordLimits
    from tests.test_engine_guessing import make, req, run

    engine, clock, store = make(password_limits=PasswordLimits(max_failures=2, window=60,
                                                               pause=60))
    engine.directory = StateDirectory(state, proved)
    got = [run(engine.login(req("whatever", station="203.0.113.9")))[0].reason
           for _ in range(3)]
    third = Reason.PASSWORDS_THROTTLED if throttled else Reason(state.value)
    assert got == [Reason(state.value)] * 2 + [third]
    assert engine.provider.requests == []

_NOISE = st.text(alphabet=st.sampled_from(list("data 0123456789abcdefABCDEF,:xv\u200b５\n")) |
                 st.characters(), max_size=80)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_NOISE, st.sampled_from(
    ["AcceptSecurityContext error", "data 533", "data 775", ", ", "data 52e"])), max_size=8))
def test_no_diagnostic_crashes_the_parser_and_a_state_needs_exactly_one_known_code(parts):
    message = "".join(parts)
    refusal = parse_bind_diagnostic(message)
    if refusal.state is not None:
        assert "AcceptSecurityContext error" in message[:512]
        assert AD_DATA[refusal.data][0] is refusal.state


_VALUES = st.lists(st.one_of(st.text(max_size=25), st.integers().map(str)), max_size=3)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["userAccountControl", "useraccountcontrol",
                                        "msDS-User-Account-Control-Computed", "accountExpires",
                                        "pwdLastSet", "lockoutTime", "other"]), _VALUES),
       st.floats(min_value=0, max_value=4e9))
def test_no_entry_crashes_the_flag_reader(attrs, now):
    assert entry_state(attrs, now) in (None, *AccountState)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_no_mschap_error_crashes_its_reader(value):
    assert mschap_error_state(value) in (None, *AccountState)
