"""Issue 21 acceptance in real headless Chromium: the web authenticator's prompt shows
where the login comes from and the risk warning, read from databases built by mmdb-writer.

Reuses the browser machinery of test_webapp_chromium (its `Phone` and its module-scoped
``phone`` fixture: one more headless Chromium for this module).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted

from pushproxy.approval.store import SQLiteStore
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient_sync
from tests.integration.test_approval_e2e import Stack
from tests.integration.test_context_login import context_section
from tests.integration.test_webapp_chromium import blocking, in_thread, phone  # noqa: F401

# more keys of context.signals (indented under it)
WARN = "    new_country: warn\n    new_asn: ignore\n    new_network: ignore\n"


@pytest.fixture(scope="module")
def located(slapd, tmp_path_factory, phone):  # noqa: F811 - the imported fixture
    """A daemon with context: and alice's app enrolled; alice has learned Berlin."""
    tmp = tmp_path_factory.mktemp("context-web")
    running = pytest_twisted.blockon(Stack(tmp, slapd, timeout=20,
                                           extra=context_section(tmp, WARN)).start())
    store = SQLiteStore(running.config.approval.database)
    try:  # two approved logins from Berlin, as the engine would have recorded them
        for at in (time.time() - 7200, time.time() - 3600):
            store.learn_login("alice", at, [("country", "DE"), ("asn", "64500")],
                              (52.52, 13.405, "DE"), 64)
    finally:
        store.close()
    origin = f"http://127.0.0.1:{running.http_port}"

    def enroll():
        phone.set_notifications(origin, "denied")  # no wait for a push subscription
        phone.open(running.link("alice"))
        phone.click("enroll-button")
        phone.visible("screen-idle")
        phone.wait_text("connection", "Connected")

    blocking(enroll)
    yield running
    pytest_twisted.blockon(running.stop())


def attrs(station: str):
    return [("User-Name", "alice"), ("User-Password", "alice-pw"),
            ("Calling-Station-Id", station), ("NAS-Identifier", "gw-e2e"),
            ("Message-Authenticator", "0x00")]


def login_seen(stack, station: str, location: str, warnings: list[str]):
    """A radclient login; the page shows its location and warnings; approve; the reply."""
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(radclient_sync, stack.radius, SECRET, attrs(station), timeout=30)
        phone_ = stack.phone
        phone_.visible("screen-request")
        phone_.wait_text("request-client-ip", station)
        phone_.wait_text("request-location", location)
        shown = phone_.driver.execute_script(
            "const l = document.getElementById('request-warnings');"
            "return l.hidden ? [] : [...l.children].map((li) => li.textContent);")
        assert shown == warnings
        phone_.click("approve")
        phone_.wait_text("result-title", "Approved")
        return login.result(timeout=40)


@pytest_twisted.inlineCallbacks
def test_the_web_prompt_shows_the_location_and_a_first_login_warning(located, phone):  # noqa: F811
    located.phone = phone
    usual = yield in_thread(login_seen, located, "192.0.2.10",
                            "Berlin, Germany · AS64500 Example Berlin Net", [])
    assert usual.code == "Access-Accept"
    new = yield in_thread(login_seen, located, "198.51.100.7",
                          "Lisbon, Portugal · AS64501 Example Lisboa",
                          ["First login from Portugal"])
    assert new.code == "Access-Accept"
    events = located.audit()
    assert [e["location"]["country_code"] for e in events] == ["DE", "PT"]
    assert events[-1]["signals"] == ["new_country", "new_asn", "new_network"]
