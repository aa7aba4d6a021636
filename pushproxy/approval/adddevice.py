""""Add a device": an enrolled device asks for a one-time link that a new device redeems.

``POST /v1/device/enrollment`` is a device-authenticated request (signed by an
active device of the user, like an answer: see docs/approval-protocol.md), so
the signature of a device the user already has is what approves the new one;
a password alone, or a revoked device, gets nothing. The link is an ordinary
enrollment link of that user (``approval.enrollment_ttl``, works once), shown
by the web authenticator as a QR code for the new phone. The user's other open
links end: one open link at a time. A lost phone with no other device still
goes through the admin (``devices revoke``, a new link) or bypass codes.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets

import segno

from pushproxy import logs
from pushproxy.approval import crypto
from pushproxy.approval.service import enrollment_link

log = logging.getLogger("pushproxy.approval")


def qr_data_uri(link: str) -> str:
    """The link as a PNG QR code in a data: URI (the app's CSP allows data: images)."""
    out = io.BytesIO()
    segno.make(link, error="m").save(out, kind="png", scale=5, border=4)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


async def new_device_link(service, device, public_url: str, ttl: float) -> dict:
    """A one-time enrollment link for ``device``'s user (the device is authenticated)."""
    now = service.wallclock()
    token = secrets.token_urlsafe(32)
    hashed = crypto.token_hash(token)
    await service.store.create_enrollment(device.username, hashed, now, now + ttl)
    await service.store.end_open_enrollments(device.username, now, hashed)
    service.counters.inc("device_links")
    logs.event(log, logging.INFO, "approval.device_link", user=device.username,
               device=device.id, expires_in_s=round(ttl))
    link = enrollment_link(public_url, token)
    return {"link": link, "expires": now + ttl, "qr": qr_data_uri(link)}
