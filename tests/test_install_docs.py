"""The install path an admin follows stays true (issue 17): README, docs, unit and drop-in agree.

Debian 12/13 and Ubuntu 24.04 refuse a system-wide pip install (PEP 668), so
the documented install is a venv in /opt/pushproxy, which is where the unit's
ExecStart points; the README links the pages an admin needs next.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SYSTEMD_DOC = (ROOT / "docs" / "systemd.md").read_text()
UNIT = (ROOT / "systemd" / "pushproxy.service").read_text()


def test_the_readmes_first_two_commands_are_unchanged():
    block = README.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("pip install -e . && pushproxy demo ")
    assert block[1].startswith("scripts/test ")


def test_the_units_execstart_is_the_venv_the_docs_install():
    start = re.search(r"^ExecStart=(\S+) serve --config /etc/pushproxy/config.yaml$", UNIT,
                      re.M)
    assert start and start.group(1) == "/opt/pushproxy/bin/pushproxy"
    for text in (README, SYSTEMD_DOC):
        assert "python3 -m venv /opt/pushproxy" in text
        assert "/opt/pushproxy/bin/pip install" in text
        assert "PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install" in text
        assert "PEP 668" in text
    assert "pip install /path/to/pushproxy            # -> /usr/local/bin" not in SYSTEMD_DOC


def test_the_low_ports_drop_in_grants_exactly_the_bind_capability():
    drop_in = (ROOT / "systemd" / "low-ports.conf").read_text()
    lines = [line for line in drop_in.splitlines() if line and not line.startswith("#")]
    assert lines == ["[Service]", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                     "AmbientCapabilities=CAP_NET_BIND_SERVICE", "PrivateUsers=no"]
    assert "systemd/low-ports.conf" in SYSTEMD_DOC and "systemd/low-ports.conf" in UNIT


def test_the_readme_links_every_page_an_admin_needs_and_they_exist():
    for needle in ("docs/systemd.md", "docs/gateways/README.md", "docs/publishing.md",
                   "pushproxy test-connection", "pushproxy init"):
        assert needle in README, needle
    for link in re.findall(r"\]\((docs/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link


def test_every_gateway_guide_names_its_timeout_and_links_resolve():
    folder = ROOT / "docs" / "gateways"
    index = (folder / "README.md").read_text()
    pages = re.findall(r"\]\(([a-z-]+\.md)\)", index)
    assert len(pages) >= 10
    for page in pages:
        text = (folder / page).read_text()
        assert "## Timeout and retries" in text, page
        assert "Message-Authenticator" in text and "Verification modes" in text, page
        for link in re.findall(r"\]\((\.\./[^)#]+)\)", text):
            assert (folder / link).resolve().exists(), (page, link)
