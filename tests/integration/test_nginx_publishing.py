"""docs/publishing.md's nginx configuration, run for real in front of `pushproxy serve` (issue 17).

The server block is taken from the doc itself (only ports, certificate paths
and the name are swapped for the test's), with a test CA; the CLI
authenticator (verifying that CA) enrolls and approves through nginx over
HTTPS, long-polls included, and that approval releases a real RADIUS login.
The web authenticator's page is served through the same proxy; headless
Chromium (the browser helpers of test_webapp_chromium, trusting the test
server's key) enrolls the web authenticator from the link and approves a
radclient login through nginx.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration.harness import SECRET, ServeProcess, write_config
from tests.integration.radclient import radclient_sync
from tests.integration.slapd import _write_tls_material

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX),
                                reason="nginx not installed (apt-get install nginx)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"docs/publishing.md no longer has {old!r}"
    return text.replace(old, new)


def doc_server_blocks() -> str:
    """The nginx block of docs/publishing.md, verbatim."""
    doc = (ROOT / "docs" / "publishing.md").read_text()
    section = doc.split("## nginx", 1)[1]
    return section.split("```nginx\n", 1)[1].split("```", 1)[0]


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def published(slapd, tmp_path):
    """pushproxy serve behind nginx (TLS with a test CA) on loopback."""
    folder = Path(tempfile.mkdtemp(prefix="pushproxy-nginx-"))  # nginx's workers read it
    os.chmod(folder, 0o755)
    _write_tls_material(folder)  # ca.pem, server.pem/.key for localhost and 127.0.0.1
    https_port, http_port, backend, radius_port = free_port(), free_port(), free_port(), \
        free_port()
    blocks = doc_server_blocks()
    blocks = replace(blocks, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    blocks = replace(blocks, "listen [::]:443 ssl http2;\n", "")
    blocks = replace(blocks, "listen 80;", f"listen 127.0.0.1:{http_port};")
    blocks = replace(blocks, "listen [::]:80;\n", "")
    blocks = blocks.replace("server_name mfa.example.com;", "server_name localhost;")
    blocks = replace(blocks, "/etc/letsencrypt/live/mfa.example.com/fullchain.pem",
                     str(folder / "server.pem"))
    blocks = replace(blocks, "/etc/letsencrypt/live/mfa.example.com/privkey.pem",
                     str(folder / "server.key"))
    blocks = replace(blocks, "proxy_pass http://127.0.0.1:8443;",
                     f"proxy_pass http://127.0.0.1:{backend};")
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / name).mkdir()
    (folder / "nginx.conf").write_text(textwrap.dedent(f"""\
        daemon off;
        worker_processes 1;
        pid {folder / 'nginx.pid'};
        error_log {folder / 'error.log'} info;
        events {{ worker_connections 64; }}
        http {{
            access_log {folder / 'access.log'};
            client_body_temp_path {folder / 'client_body'};
            proxy_temp_path {folder / 'proxy'};
            fastcgi_temp_path {folder / 'fastcgi'};
            uwsgi_temp_path {folder / 'uwsgi'};
            scgi_temp_path {folder / 'scgi'};
        """) + textwrap.indent(blocks, "    ") + "}\n")
    public = f"https://localhost:{https_port}"
    config = write_config(tmp_path, slapd, push="timeout: 20", approval=textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:{backend}"
          public_url: "{public}"
          trusted_proxies: ["127.0.0.1"]
          database: pushproxy.db
        """))
    config.write_text(config.read_text().replace('listen: ["127.0.0.1:0"]',
                                                 f'listen: ["127.0.0.1:{radius_port}"]'))
    nginx = subprocess.Popen([NGINX, "-c", str(folder / "nginx.conf"), "-p", str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    serve = ServeProcess(config)
    try:
        serve.wait_for("daemon.ready", deadline=30)
        deadline = time.monotonic() + 15
        while "start worker process" not in (folder / "error.log").read_text() \
                if (folder / "error.log").exists() else True:
            assert nginx.poll() is None, nginx.stdout.read()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.2)
        yield config, public, folder, radius_port, http_port
    finally:
        serve.close()
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_enroll_and_approve_through_nginx_release_a_radius_login(published, tmp_path):
    config, public, folder, radius_port, http_port = published
    ca = str(folder / "ca.pem")
    context = ssl.create_default_context(cafile=ca)
    page = urllib.request.urlopen(f"{public}/app/", context=context, timeout=10)
    assert page.status == 200 and b"<html" in page.read().lower()
    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    plain.request("GET", "/app/", headers={"Host": "localhost"})
    moved = plain.getresponse()
    assert moved.status == 301 and moved.getheader("Location") == "https://localhost/app/"
    plain.close()

    link = cli("enroll", "alice", "--no-qr", "--config", str(config))
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{public}/app/enroll#")
    state = str(tmp_path / "alice-phone")
    made = cli("authenticator", "enroll", url, "--state", state, "--ca-file", ca)
    assert made.returncode == 0, made.stdout + made.stderr
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        login = pool.submit(radclient_sync, f"127.0.0.1:{radius_port}", SECRET,
                            [("User-Name", "alice"), ("User-Password", "alice-pw"),
                             ("Message-Authenticator", "0x00")], timeout=40)
        approved = cli("authenticator", "watch", "--state", state, "--auto", "approve",
                       "--count", "1", "--ca-file", ca, timeout=60)
        result = login.result(60)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert result.code == "Access-Accept", result.stdout + result.stderr
    access = (folder / "access.log").read_text()
    assert "/v1/" in access and "/app/" in access  # the device API went through nginx


def spki_hash(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what --ignore-certificate-errors-spki-list takes."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem.read_bytes()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_chromium_enrolls_the_web_authenticator_and_approves_through_nginx(published,
                                                                           tmp_path):
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from tests.integration.chromium import (
        CHROMEDRIVER, CHROMIUM, Phone, enroll_in_browser, login_and_answer)

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing (apt-get install {package})")
    config, public, folder, radius_port, http_port = published
    link = cli("enroll", "alice", "--no-qr", "--config", str(config))
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{public}/app/enroll#")
    # Chromium trusts the test server's key (as an installed CA would make it), so the
    # page is a secure context over real TLS: no certificate-error interstitial, and
    # WebCrypto and the service worker work as they do for a public certificate.
    phone = Phone(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path),
                  (f"--ignore-certificate-errors-spki-list={spki_hash(folder / 'server.pem')}",))
    try:
        # the helpers' duck types: where the app is and where RADIUS logins go
        stack = SimpleNamespace(config=SimpleNamespace(approval=SimpleNamespace(public_url=public)),
                                radius=f"127.0.0.1:{radius_port}")
        app = SimpleNamespace(phone=phone, stack=stack, origin=public, app_url=f"{public}/app/")
        enroll_in_browser(phone, app, url)
        assert phone.driver.current_url.startswith(f"{public}/app/")
        approved = login_and_answer(app, "198.51.100.7", ("approve",), "Approved")
    finally:
        phone.quit()
    assert approved.code == "Access-Accept", approved.stdout + approved.stderr
    # the browser's enrollment and answer went through nginx, not around it
    browser = [line for line in (folder / "access.log").read_text().splitlines()
               if "HeadlessChrome" in line]
    assert any("/app/" in line for line in browser), browser
    assert any("POST /v1/" in line for line in browser), browser
