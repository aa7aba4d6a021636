"""Shared fixtures for integration tests against real peers (slapd, radclient)."""

from __future__ import annotations

from typing import Iterator

import pytest
import pytest_twisted

try:  # tests/integration as a package (with __init__.py files)
    from .samba_dc import SambaDC, samba_unavailable
    from .slapd import Slapd, slapd_available
except ImportError:  # rootdir-relative "prepend" import mode without packages
    from samba_dc import SambaDC, samba_unavailable
    from slapd import Slapd, slapd_available


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """One private slapd for the whole session (skipped if slapd is missing).

    Tests must not change the seeded data in a way other tests can observe;
    use a function-scoped ``Slapd`` for destructive tests.  The state
    directory (config, certificates, ``slapd.log``) is left under pytest's
    basetemp for post-mortem debugging.
    """
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    server = Slapd(base_dir=tmp_path_factory.mktemp("slapd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    """One private Samba AD DC (CORP.EXAMPLE, LDAPS on its own 127.x.y.z) for the session.

    Skipped when samba is not installed or the tests do not run as root.  Tests
    must not change the seeded accounts in a way other tests can observe (the
    domain has no lockout threshold; only ``locked`` locks, and it is locked
    already).  Its database is deleted at the end; logs and the CA stay under
    pytest's basetemp.
    """
    problem = samba_unavailable()
    if problem:
        pytest.skip(problem)
    server = SambaDC(tmp_path_factory.mktemp("samba"))
    try:
        server.start()
        print(f"\nSamba AD DC {server.address} ready in {server.startup_seconds:.1f} s")
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def stacks(slapd, tmp_path):
    """Starts daemons on loopback (`test_approval_e2e.Stack`: real slapd, real approval
    service, in this process's reactor) with ``stacks(**kw)``; stops the ones still
    running at the end of the test."""
    from tests.integration.test_approval_e2e import Stack

    running = []

    @pytest_twisted.inlineCallbacks
    def make(**kw):
        stack = yield Stack(tmp_path, slapd, **kw).start()
        running.append(stack)
        return stack

    yield make
    for stack in running:
        if stack.daemon.ports:  # not stopped by the test
            pytest_twisted.blockon(stack.stop())
