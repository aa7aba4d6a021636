"""Headless Chromium for the web authenticator's integration tests: the browser
(`Phone`, driven by Debian's chromedriver through Selenium, plus the DevTools
protocol), enrolling the app in it, and RADIUS logins answered in the page.

Shared by test_webapp_chromium.py (issue 4), test_rollout_chromium.py,
test_nginx_publishing.py and test_presence_chromium.py (issue 21).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval.store import SQLiteStore
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient_sync
from tests.integration.test_approval_e2e import Stack, login_attrs

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[test]')")
websocket = pytest.importorskip("websocket", reason="websocket-client (a selenium dependency) "
                                "is not installed")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No network but loopback here: everything that would phone home is switched off,
# or Chromium keeps trying to reach Google's services.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps", "--window-size=390,844",
)
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
WAIT = 15  # seconds any one thing may take to show up in the page
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def in_thread(fn, *args, **kwargs):
    """Run blocking browser code in a thread while the reactor (and the daemon) runs.

    Tests ``yield`` the Deferred (they run in the reactor's greenlet); fixtures
    wait with `blocking`.
    """
    return threads.deferToThread(fn, *args, **kwargs)


def blocking(fn, *args, **kwargs):
    """`in_thread` for fixtures, which run outside the reactor's greenlet."""
    return pytest_twisted.blockon(in_thread(fn, *args, **kwargs))


class Phone:
    """Headless Chromium at phone size, with the few helpers the tests need."""

    def __init__(self, profile: str, extra_flags: tuple[str, ...] = ()):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS + tuple(extra_flags):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_script_timeout(WAIT)
        self.console: list[dict] = []  # every console entry so far (get_log drains)

    def quit(self):
        """Close the browser and chromedriver."""
        self.driver.quit()

    def open(self, url: str):
        """Load url in the phone-sized viewport (390x844 CSS pixels, touch, mobile)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
        self.driver.get(url)

    def cdp(self, method: str, params: dict | None = None) -> dict:
        """One DevTools protocol command through chromedriver (no events)."""
        return self.driver.execute_cdp_cmd(method, params or {})

    def set_notifications(self, origin: str, setting: str):
        """Answer the notification permission for origin in advance ("granted"/"denied")."""
        self.cdp("Browser.setPermission", {"permission": {"name": "notifications"},
                                           "setting": setting, "origin": origin})

    def visible(self, element_id: str, timeout: float = WAIT):
        """Wait until the element is displayed; returns it."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
                EC.visibility_of_element_located((By.ID, element_id)))
        except TimeoutException:
            raise AssertionError(f"#{element_id} did not show within {timeout} s; "
                                 f"screen: {self.screen()!r}") from None

    def wait_text(self, element_id: str, text: str, timeout: float = WAIT):
        """Wait until the element's text contains text."""
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
                EC.text_to_be_present_in_element((By.ID, element_id), text))
        except TimeoutException:
            raise AssertionError(f"#{element_id} never read {text!r} (it reads "
                                 f"{self.text(element_id)!r}; screen {self.screen()!r})") from None

    def text(self, element_id: str) -> str:
        """The element's rendered text."""
        return self.driver.find_element(By.ID, element_id).text

    def click(self, element_id: str):
        """Click the element once it is displayed."""
        self.visible(element_id).click()

    def screen(self) -> str | None:
        """The id of the section on screen."""
        return self.driver.execute_script(
            "const s = document.querySelector('main > section.screen:not([hidden])');"
            "return s && s.id;")

    def run_async(self, script: str, *args):
        """Run an async function body (``await`` allowed) in the page; returns its value.

        A rejection in the page raises AssertionError here.
        """
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"(async (...args) => {{ {script} }})(...Array.from(arguments).slice(0, -1))"
            ".then((value) => done({value}), (e) => done({failed: String(e)}));", *args)
        if "failed" in result:
            raise AssertionError(f"script failed in the page: {result['failed']}")
        return result.get("value")

    def logs(self) -> list[dict]:
        """Every browser console entry since the browser started."""
        self.console += self.driver.get_log("browser")
        return self.console

    def screenshot(self, name: str):
        """docs/screenshots/NAME.png of the viewport at 2x, when PUSHPROXY_SCREENSHOTS=1."""
        if os.environ.get("PUSHPROXY_SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = self.cdp("Page.captureScreenshot", {
            "format": "png", "clip": {"x": 0, "y": 0, "width": PHONE["width"],
                                      "height": PHONE["height"], "scale": 2}})
        (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def page_socket(self):
        """A second DevTools connection to the page, for commands whose events we need."""
        address = self.driver.capabilities["goog:chromeOptions"]["debuggerAddress"]
        with urllib.request.urlopen(f"http://{address}/json/list", timeout=5) as answer:
            targets = json.load(answer)
        handle = self.driver.current_window_handle
        page = next((t for t in targets if t["type"] == "page" and t["id"] == handle),
                    next(t for t in targets if t["type"] == "page"))
        # Without suppress_origin, Chromium refuses the connection (--remote-allow-origins).
        return Cdp(websocket.create_connection(page["webSocketDebuggerUrl"], timeout=WAIT,
                                               suppress_origin=True))


class Cdp:
    """A minimal DevTools protocol client over one websocket (commands + events)."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def close(self):
        """Hang up."""
        self.ws.close()

    def send(self, method: str, params: dict | None = None) -> dict:
        """A command's result; events that arrive meanwhile are kept for `wait_event`."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_event(self, method: str, accept, timeout: float = WAIT) -> dict:
        """The first event ``method`` (seen already or coming) whose params pass ``accept``."""
        end = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and accept(event["params"]):
                    return event["params"]
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {method} event within {timeout} s")
            self.ws.settimeout(left)
            self.events.append(json.loads(self.ws.recv()))


class EnrolledApp:
    """The module's browser with the app enrolled for alice at stack's origin."""

    def __init__(self, phone: Phone, stack: Stack, host: str = "127.0.0.1"):
        self.phone = phone
        self.stack = stack
        # "localhost" where passkeys are needed: WebAuthn takes no IP address as RP ID
        self.origin = f"http://{host}:{stack.http_port}"
        self.app_url = self.origin + "/app/"


def enroll_in_browser(phone: Phone, app: EnrolledApp, link: str):
    """Open the link, tap Set up, and wait for the app to be ready for requests."""
    phone.set_notifications(app.origin, "granted")  # before the tap, as a user would
    phone.open(link.replace(app.stack.config.approval.public_url, app.origin))
    phone.visible("enroll-button")
    assert phone.screen() == "screen-enroll"
    assert phone.driver.find_element(By.ID, "device-name").get_attribute("value")
    name = phone.driver.find_element(By.ID, "device-name")
    name.clear()
    name.send_keys("Alice's phone")
    phone.driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    phone.screenshot("enroll")
    phone.click("enroll-button")
    phone.visible("screen-idle")
    phone.wait_text("idle-enrolled", "This phone is set up for alice")
    phone.wait_text("connection", "Connected")


#: Page script: ``record``, the app's device record, read from IndexedDB the way
#: the app stores it (common.js), not through the app's own code.
LOAD_RECORD = """
    const db = await new Promise((ok, fail) => {
      const open = indexedDB.open("pushproxy");
      open.onsuccess = () => ok(open.result); open.onerror = () => fail(open.error);
    });
    const record = await new Promise((ok, fail) => {
      const get = db.transaction("device").objectStore("device").get("current");
      get.onsuccess = () => ok(get.result); get.onerror = () => fail(get.error);
    });
    db.close();
"""


def devices(stack, user="alice", include_revoked=False):
    """The user's devices, read straight from the daemon's database."""
    store = SQLiteStore(stack.config.approval.database)
    try:
        return store.devices(user, include_revoked=include_revoked)
    finally:
        store.close()


def wait_for(predicate, what: str, timeout: float = WAIT, every: float = 0.05):
    """Poll predicate until it returns something true (returned) or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def login_and_answer(app: EnrolledApp, station: str, buttons: tuple[str, ...], result: str,
                     screenshot: str | None = None):
    """A radclient login from station; the page shows it; click buttons; the RADIUS reply.

    A button written ``enter:ID`` must have the keyboard focus and is pressed with Enter.
    """
    phone = app.phone
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(radclient_sync, app.stack.radius, SECRET,
                            login_attrs(station=station), timeout=30)
        phone.visible("screen-request")
        phone.wait_text("request-client-ip", station)
        assert phone.text("request-title") == "Are you trying to sign in?"
        assert phone.text("request-username") == "alice"
        assert phone.text("request-application") == "test-nas"
        assert phone.text("request-nas") == "gw-e2e"
        assert phone.text("request-time")
        assert phone.text("request-countdown").startswith("Expires in 0:")
        if screenshot:
            phone.screenshot(screenshot)
        for button in buttons:
            if button.startswith("enter:"):  # by keyboard: focus is already there
                button = button.removeprefix("enter:")
                focused = phone.driver.switch_to.active_element
                assert focused.get_attribute("id") == button
                focused.send_keys(Keys.ENTER)
            else:
                phone.click(button)
        phone.wait_text("result-title", result)
        return login.result(timeout=40)


def audit_reason(stack, txcount: int) -> str:
    """The reason of the last audit line, once there are txcount lines."""
    lines = wait_for(lambda: (lambda a: a if len(a) >= txcount else None)(stack.audit()),
                     f"{txcount} audit lines")
    return lines[-1]["reason"]


def require_chromium() -> None:
    """Skip the test when Chromium or its driver is not installed."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing (apt-get install {package})")
