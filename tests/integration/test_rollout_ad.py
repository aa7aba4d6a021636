"""The command-line tools against a real Samba AD DC: a rollout's group members include
the users whose *primary group* it is, whom AD keeps out of the group's ``member``
list; ``baseline show|forget`` resolve AD spellings as logins key them.

dora's ``primaryGroupID`` is vpn-users' RID (`samba_dc.USERS`); vpn-users lists
bob and, through vpn-staff and vpn-team, alice. ``pushproxy rollout status`` and
``pushproxy enroll --group --dry-run`` (the real command line, as a subprocess)
must name all three, and find dora allowed by ``ldap.required_groups``
(vpn-users), as her logins are.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pushproxy.config import parse_config
from pushproxy.rollout.directory import RolloutDirectory, UserStatus
from tests.integration.harness import write_config
from tests.integration.test_ad_logins import AD_FILTER, ad_ldap, directory

BASE = "DC=corp,DC=example"


@pytest.fixture
def ad_config(samba_dc, tmp_path):
    """A config for the Samba DC (required_groups: vpn-users, nested groups, AD domains)."""
    approval = f"approval:\n  listen: \"127.0.0.1:0\"\n  public_url: \"http://127.0.0.1\"\n" \
               f"  database: {tmp_path / 'pushproxy.db'}\n"
    return write_config(tmp_path, directory(samba_dc, tmp_path), ldap_extra=ad_ldap(samba_dc),
                        user_filter=AD_FILTER, approval=approval)


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_a_groups_members_include_its_primary_group_members(samba_dc, ad_config):
    config = parse_config(ad_config.read_text(), base_dir=ad_config.parent, env={})
    listing = RolloutDirectory(config.ldap)
    try:
        assert sorted(listing.members(samba_dc.group_dn("vpn-users"))) == \
            ["alice", "bob", "dora"]
        # Domain Users is every account's primary group, and lists none of them.
        everyone = listing.members(f"CN=Domain Users,CN=Users,{BASE}")
        assert {"alice", "bob", "carol", "dora"} <= set(everyone)
        assert "vpn-users" not in everyone  # a group is never listed as an account
        dora = listing.user("dora")
        assert (dora.status, dora.account) == (UserStatus.FOUND, "dora")
        assert listing.user("carol").status is UserStatus.NOT_ALLOWED
    finally:
        listing.close()


def test_rollout_status_and_enroll_name_the_primary_group_member(samba_dc, ad_config):
    group = samba_dc.group_dn("vpn-users")
    code, out, err = cli("rollout", "status", "--group", group, "--format", "json",
                         "--config", str(ad_config))
    assert code == 0, err
    assert {r["user"]: r["status"] for r in json.loads(out)} == \
        {"alice": "none", "bob": "none", "dora": "none"}
    code, out, err = cli("enroll", "--group", group, "--dry-run", "--config", str(ad_config))
    assert f"group {group}: 3 member(s)" in out, (out, err)
    assert any(line.startswith("dora: ") and "refused" not in line
               for line in out.splitlines()), out


def test_baseline_show_and_forget_take_every_ad_spelling(samba_dc, ad_config):
    """``pushproxy baseline`` keys on the account logins key on: CORP\\alice and
    alice@corp.example are alice's baseline; a domain not served is refused."""
    from pushproxy.approval.store import SQLiteStore

    config = parse_config(ad_config.read_text(), base_dir=ad_config.parent, env={})
    store = SQLiteStore(config.approval.database)
    try:
        store.learn_login("alice", 1_800_000_000.0, [("hour", "8"), ("country", "DE")],
                          (52.52, 13.405, "DE"), 64)
    finally:
        store.close()
    for spelling in ("CORP\\alice", "alice@corp.example", "ALICE"):
        code, out, err = cli("baseline", "show", spelling, "--config", str(ad_config))
        assert code == 0, err
        assert out.startswith("alice: 1 approved login(s)"), (spelling, out)
    code, out, err = cli("baseline", "forget", "EVIL\\alice", "--config", str(ad_config))
    assert code == 1 and "baseline: 'EVIL\\\\alice' names a domain not in" in err, err
    code, out, err = cli("baseline", "forget", "alice@corp.example", "--config", str(ad_config))
    assert code == 0 and "forgot alice's baseline" in out, (out, err)
    code, out, _ = cli("baseline", "show", "CORP\\alice", "--config", str(ad_config))
    assert "alice: nothing learned yet" in out
