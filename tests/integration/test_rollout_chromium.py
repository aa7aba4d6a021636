"""Issue 19 acceptance: a link from an enrollment mail, opened in headless Chromium,
enrolls the web authenticator, which then approves a real RADIUS login and makes a
one-time link ("add another device") that enrolls a second device: a second headless
Chromium with its own profile (its own keys and storage). Both see the next login and
one approval releases it; each device still approves on its own, and the second one can
make a link in turn (redeemed by the CLI authenticator).

The mail comes from ``pushproxy enroll --mail`` through the loopback SMTP server
(aiosmtpd, STARTTLS + AUTH) of test_rollout_mail; the browser helpers are those of
test_webapp_chromium.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient_sync
from tests.integration.test_approval_e2e import Stack, login_attrs
from tests.integration.test_rollout_mail import (  # noqa: F401 (directory, smtp: fixtures)
    cli, directory, link_in, mail_section, smtp)
from tests.integration.chromium import (CHROMEDRIVER, CHROMIUM, By, EnrolledApp,
                                                    Phone, enroll_in_browser, in_thread,
                                                    login_and_answer)


def add_device_link(phone: Phone) -> tuple[str, str]:
    """Press "Add another device" on the idle screen; the one-time link and its QR image."""
    phone.visible("screen-idle")
    phone.click("add-device")
    phone.visible("add-device-box")
    qr = phone.driver.find_element(By.ID, "add-device-qr").get_attribute("src")
    return phone.text("add-device-link"), qr


def both_see_one_approves(first: EnrolledApp, second: EnrolledApp, station: str):
    """A radclient login that both devices show; second approves; the RADIUS reply.

    The first device's request screen must then give way to its idle screen.
    """
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(radclient_sync, first.stack.radius, SECRET,
                            login_attrs(station=station), timeout=30)
        for app in (first, second):
            app.phone.visible("screen-request")
            app.phone.wait_text("request-client-ip", station)
            assert app.phone.text("request-username") == "alice"
        second.phone.click("approve")
        second.phone.wait_text("result-title", "Approved")
        reply = login.result(timeout=40)
    first.phone.visible("screen-idle")
    return reply


@pytest_twisted.inlineCallbacks
def test_a_mailed_link_enrolls_chromium_which_adds_a_second_chromium(tmp_path, directory,
                                                                     smtp):
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing (apt-get install {package})")
    stack = yield Stack(tmp_path, directory,
                        extra=mail_section(tmp_path, directory, smtp.port)).start()
    phones = []
    try:
        code, out, err = yield threads.deferToThread(
            cli, "enroll", "--mail", "alice", "--config", str(stack.config_path))
        assert code == 0 and "sent: 1: alice" in out, (out, err)
        (mail,) = yield threads.deferToThread(smtp.wait_for, 1)
        phone = yield in_thread(Phone, tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
        phones.append(phone)
        app = EnrolledApp(phone, stack)

        def platform_help():
            phone.open(link_in(mail))
            phone.visible("enroll-button")
            return {h: phone.driver.find_element(By.ID, h).get_attribute("open")
                    for h in ("help-ios", "help-android", "help-desktop", "help-cli")}

        # the enrollment page opens the instructions for this browser (desktop Chromium)
        opened = yield in_thread(platform_help)
        assert opened == {"help-ios": None, "help-android": None, "help-desktop": "true",
                          "help-cli": None}
        yield in_thread(enroll_in_browser, phone, app, link_in(mail))
        approved = yield in_thread(login_and_answer, app, "198.51.100.7", ("approve",),
                                   "Approved")
        assert approved.code == "Access-Accept"
        # "add another device": the app signs the request; a second Chromium (its own
        # profile, so its own keys and storage) opens the link and becomes alice's
        # second device
        link, qr = yield in_thread(add_device_link, phone)
        assert qr.startswith("data:image/png;base64,") and "/app/enroll#" in link
        second = yield in_thread(Phone, tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
        phones.append(second)
        other = EnrolledApp(second, stack)
        yield in_thread(enroll_in_browser, second, other, link)
        # both devices see the next login; the new one approves, which releases it
        # and takes the request off the first one's screen
        released = yield in_thread(both_see_one_approves, app, other, "198.51.100.9")
        assert released.code == "Access-Accept"
        # the first device still answers on its own
        approved = yield in_thread(login_and_answer, app, "198.51.100.10", ("approve",),
                                   "Approved")
        assert approved.code == "Access-Accept"
        # the second device can make a link too: the CLI authenticator redeems it
        link, _ = yield in_thread(add_device_link, second)
        third = yield threads.deferToThread(auth.enroll, link, str(tmp_path / "cli"), "cli")
        assert third["username"] == "alice"
        code, out, err = yield threads.deferToThread(
            cli, "rollout", "status", "--format", "csv", "--config", str(stack.config_path))
        assert out.splitlines()[1].startswith("alice,device,3,"), out
    finally:
        for browser in phones:
            yield in_thread(browser.quit)
        yield stack.stop()
