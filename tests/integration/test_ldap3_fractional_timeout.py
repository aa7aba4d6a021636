"""The command-line LDAP paths (ldap3) with a fractional ``ldap.response_timeout``.

The config accepts 0.1-120 s; ldap3 packs its receive timeout into SO_RCVTIMEO
as an integer, so ``response_timeout: 1.5`` raised struct.error out of every
lookup of `pushproxy admin`, the rollout commands and test-connection's bind.
"""

from __future__ import annotations

import io
from dataclasses import replace

from pushproxy.connectivity.ldapcheck import check_ldap_server
from pushproxy.connectivity.report import Report
from pushproxy.decision import PrimaryStatus
from pushproxy.ldapauth import LdapDirectory
from pushproxy.metrics import Counters
from tests.integration.harness import load, write_config


def test_a_fractional_response_timeout_looks_users_up_and_checks_the_bind(slapd, tmp_path):
    config = load(write_config(tmp_path, slapd, servers=[slapd.ldaps_url]))
    ldap = replace(config.ldap, response_timeout=1.5, connect_timeout=1.5, ca_file=slapd.ca_file)
    result = LdapDirectory(ldap, reactor=None, counters=Counters()).lookup_blocking("alice")
    assert result.status is PrimaryStatus.OK, result

    out = io.StringIO()
    report = Report(out)
    check_ldap_server(report, replace(config, ldap=ldap), 0, "alice")
    assert not report.failures, out.getvalue()
    assert "OK    bind" in out.getvalue()
