"""Issue 19 acceptance: a link from an enrollment mail, opened in headless Chromium,
enrolls the web authenticator, which then approves a real RADIUS login and makes a
one-time link ("add another device") that enrolls a second device.

The mail comes from ``pushproxy enroll --mail`` through the loopback SMTP server
(aiosmtpd, STARTTLS + AUTH) of test_rollout_mail; the browser helpers are those of
test_webapp_chromium.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.test_approval_e2e import Stack
from tests.integration.test_rollout_mail import (  # noqa: F401 (directory, smtp: fixtures)
    cli, directory, link_in, mail_section, smtp)
from tests.integration.test_webapp_chromium import (CHROMEDRIVER, CHROMIUM, By, EnrolledApp,
                                                    Phone, enroll_in_browser, in_thread,
                                                    login_and_answer)


@pytest_twisted.inlineCallbacks
def test_a_mailed_link_enrolls_chromium_which_approves_a_radius_login(tmp_path, directory,
                                                                      smtp):
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing (apt-get install {package})")
    stack = yield Stack(tmp_path, directory,
                        extra=mail_section(tmp_path, directory, smtp.port)).start()
    phone = None
    try:
        code, out, err = yield threads.deferToThread(
            cli, "enroll", "--mail", "alice", "--config", str(stack.config_path))
        assert code == 0 and "sent: 1: alice" in out, (out, err)
        (mail,) = yield threads.deferToThread(smtp.wait_for, 1)
        phone = yield in_thread(Phone, tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
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
        # "add another device": the app signs the request; the CLI authenticator
        # redeems the link it shows and becomes alice's second device
        def add_device():
            phone.visible("screen-idle")
            phone.click("add-device")
            phone.visible("add-device-box")
            qr = phone.driver.find_element(By.ID, "add-device-qr").get_attribute("src")
            return phone.text("add-device-link"), qr

        link, qr = yield in_thread(add_device)
        assert qr.startswith("data:image/png;base64,") and "/app/enroll#" in link
        second = yield threads.deferToThread(auth.enroll, link, str(tmp_path / "cli"), "cli")
        assert second["username"] == "alice"
        code, out, err = yield threads.deferToThread(
            cli, "rollout", "status", "--format", "csv", "--config", str(stack.config_path))
        assert out.splitlines()[1].startswith("alice,device,2,"), out
    finally:
        if phone is not None:
            yield in_thread(phone.quit)
        yield stack.stop()
