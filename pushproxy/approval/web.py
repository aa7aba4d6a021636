"""The HTTP plumbing under the approval API: requests, site, JSON answers, static app.

`ApiRequest` enforces the body limit while the body arrives (before any
parsing), adds the security headers to every answer and turns an unexpected
error into a JSON 500 without a traceback; `ApiSite` logs one structured line
per request and closes idle connections. `WebApp` serves the web
authenticator's files with a strict Content-Security-Policy.
"""

from __future__ import annotations

import json
import ipaddress
import logging
import os
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.python.failure import Failure
from twisted.web import http, resource, server, static

from pushproxy import logs
from pushproxy.httpdeadline import DeadlineChannel, Deadlines
from pushproxy.netaddr import holds, peer_address

log = logging.getLogger("pushproxy.approval.api")


#: The Content-Type of every answer.
JSON_CONTENT_TYPE = b"application/json; charset=utf-8"


#: Sent on every response, including errors and whatever is mounted at /app.
SECURITY_HEADERS = (
    (b"Cache-Control", b"no-store"),  # answers hold per-user data: never cache them
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),  # /app/enroll#token pages must not leak their URL
)


#: Seconds without any byte before Twisted's own idle timer closes a connection.
#: The absolute read deadlines (`Deadlines`, approval.header_timeout and
#: friends) are what bound a client that trickles bytes; long-polls are not
#: affected by either: no deadline runs while a request is being answered.
IDLE_TIMEOUT = 60


# json.dumps builds a new encoder for every call with non-default arguments.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def json_bytes(obj: Any) -> bytes:
    """Compact JSON, UTF-8."""
    return _COMPACT.encode(obj).encode("utf-8")


def error_body(code: str, message: str) -> dict:
    """The body of every error answer: a machine code and words for a human."""
    return {"error": code, "message": message}


def set_json(request: server.Request, status: int, obj: dict) -> bytes:
    """Set status and headers for a JSON answer; returns the body to write."""
    body = json_bytes(obj)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


#: Only used when an ApiRequest is served by some other Site; matches the config default.
DEFAULT_MAX_BODY = 16384


def site_max_body(request: server.Request) -> int:
    """The body limit of the Site serving ``request`` (``approval.max_body``)."""
    site = getattr(request.channel, "site", None) if request.channel is not None else None
    return getattr(site, "max_body", DEFAULT_MAX_BODY)


class ApiRequest(server.Request):
    """A request that enforces the body limit while the body arrives and never leaks internals.

    Twisted reads a whole body before any resource sees the request, so the limit
    has to live here: a declared Content-Length over the limit is answered 413 as
    soon as the headers are in, and a chunked body is cut off once it passes it.
    """

    _too_large = False
    _answered_early = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        """Headers are in: refuse an oversized declared body before reading any of it."""
        # Bodies are capped at max_body, so memory is enough; Twisted would use a temp file.
        self.content = BytesIO()
        if length is not None and length > site_max_body(self):
            self._refuse_too_large()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep body data up to the limit; past it, answer 413 and drop the rest."""
        if self._too_large:
            return
        self._received += len(data)
        if self._received > site_max_body(self):
            self._refuse_too_large()
            return
        self.content.write(data)

    def _refuse_too_large(self) -> None:
        self._too_large = True
        self.content = BytesIO()
        limit = site_max_body(self)
        logs.event(log, logging.INFO, "approval.http.too_large", limit=limit,
                   client=client_address(self))
        channel = self.channel
        if not isinstance(channel, http.HTTPChannel) or channel.transport is None:
            # Not HTTP/1.x: the body is discarded as it comes and render() answers 413.
            return
        body = json_bytes(error_body("too_large", f"request body over {limit} octets"))
        head = [b"HTTP/1.1 413 Request Entity Too Large",
                b"Content-Type: " + JSON_CONTENT_TYPE,
                b"Content-Length: %d" % len(body),
                b"Connection: close"]
        head += [name + b": " + value for name, value in SECURITY_HEADERS]
        # Answer now and hang up instead of reading (and buffering) what the client sends.
        channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        # Otherwise Twisted would send "100 Continue" after our final answer.
        self.requestHeaders.removeHeader(b"Expect")
        self._answered_early = True
        channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole request is in; skip it if it was already answered 413."""
        if self._answered_early:
            # Can only happen when the whole oversized body came in one read.
            return
        super().requestReceived(command, path, version)

    def write(self, data: bytes) -> None:
        """Write response data; the first write adds the security headers.

        Hooked here rather than in render() so that every answer gets them:
        errors, ``OPTIONS *``, and whatever is mounted at /app.
        """
        if not self.startedWriting:
            for name, value in SECURITY_HEADERS:
                self.setHeader(name, value)
            # The Server header would tell every scanner the exact Twisted version.
            self.responseHeaders.removeHeader(b"Server")
        super().write(data)

    def render(self, resrc: resource.IResource) -> None:
        """Render ``resrc``, or the 413 of a body cut off on a non-HTTP/1 channel."""
        if self._too_large:
            limit = site_max_body(self)
            body = set_json(self, 413, error_body("too_large",
                                               f"request body over {limit} octets"))
            self.write(body)
            self.finish()
            return
        super().render(resrc)

    def processingFailed(self, reason: Failure) -> Failure:
        """An exception escaped a resource: log it, answer a bare JSON 500."""
        logs.event(log, logging.ERROR, "approval.http.internal_error",
                   method=header_text(self.method), path=header_text(self.path),
                   error=f"{reason.type.__name__}: {reason.getErrorMessage()}",
                   traceback=reason.getTraceback())
        if self._disconnected or self.finished:
            return reason
        if self.startedWriting:
            # Too late for a status line: cut the answer short rather than send half of it.
            self.loseConnection()
            return reason
        self.write(set_json(self, 500, {"error": "internal"}))
        self.finish()
        return reason


class ApiSite(server.Site):
    """The approval API's Site: body limit, read deadlines, structured access log."""

    requestFactory = ApiRequest
    protocol = DeadlineChannel  # HTTP/1.1 only (no h2 is offered), with read deadlines
    deadline_name = "approval"

    def __init__(self, root: resource.IResource, *, max_body: int, reactor: Any,
                 timeout: float = IDLE_TIMEOUT, trusted_proxies: tuple = (),
                 deadlines: Deadlines = Deadlines(), counters: Any = None):
        # parsePOSTFormSubmission=False: no form bodies here, and parsing them costs memory.
        # Twisted's own byte-idle timer must not cut a keep-alive wait the
        # config allows to be longer.
        super().__init__(root, logPath=None, timeout=max(timeout, deadlines.idle),
                         reactor=reactor, parsePOSTFormSubmission=False)
        self.max_body = max_body
        self.deadlines = deadlines
        self.counters = counters  # http_deadline_closed
        # Reverse proxies whose X-Forwarded-For is believed (approval.trusted_proxies).
        self.trusted_proxies = tuple(trusted_proxies)

    def log(self, request: server.Request) -> None:
        """One structured line per request, without query string or any body.

        Successful requests go at debug level: every device long-polls every 25 s.
        """
        code = request.code
        level = logging.DEBUG if code < 400 else logging.INFO if code < 500 else logging.WARNING
        if not log.isEnabledFor(level):  # the usual case: the fields cost more than the check
            return
        device = request.requestHeaders.getRawHeaders(b"X-Device-Id", [None])[-1]
        logs.event(log, level, "approval.http", method=header_text(request.method),
                   path=header_text(request.path), status=code, client=client_address(request),
                   device=header_text(device) if device is not None else None,
                   sent=request.sentLength)


def header_text(value: bytes | None) -> str:
    """A header value as text; never raises on bytes that are not ASCII."""
    return (value or b"").decode("ascii", "replace")


def client_address(request: server.Request) -> str | None:
    """The client's address, or None when the connection is already gone.

    That is the TCP peer, unless the peer is one of the site's trusted proxies
    (``approval.trusted_proxies``): then the X-Forwarded-For chain is read
    from the right, skipping trusted proxies, and the first other address is
    the client. Anyone can write that header, so it is never read from a peer
    that is not trusted; a chain that does not parse ends at the proxy itself.
    """
    try:
        peer = getattr(request.getClientAddress(), "host", None)
    except Exception:  # a request whose channel is already gone
        return None
    channel = request.channel
    trusted = getattr(getattr(channel, "site", None), "trusted_proxies", ()) if channel else ()
    if peer is None or not trusted or not _is_trusted(peer, trusted):
        return peer
    client = peer
    for header in reversed(request.requestHeaders.getRawHeaders(b"X-Forwarded-For", [])):
        for hop in reversed(header.split(b",")):
            try:
                address = ipaddress.ip_address(hop.strip().decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return client  # garbage: believe nothing further left
            client = str(address)
            if not _is_trusted(client, trusted):
                return client
    return client


def _is_trusted(host: str, trusted: tuple) -> bool:
    """Whether ``host`` lies in one of the trusted proxy networks."""
    address = peer_address(host)
    return address is not None and any(holds(net, address) for net in trusted)


class NotFound(resource.Resource):
    """Any unknown path: a JSON 404."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        """The 404 answer, whatever the method."""
        return set_json(request, 404, error_body("not_found", "no such endpoint"))


#: The web authenticator's files (index.html, app.js, sw.js, ...), shipped as package data.
WEBAPP_DIR = Path(__file__).resolve().parent.parent / "webapp"


#: The policy of every page and file under /app: nothing inline, nothing from elsewhere.
APP_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           b"connect-src 'self'; worker-src 'self'; manifest-src 'self'; object-src 'none'; "
           b"base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


class WebApp(static.File):
    """The web authenticator's static files at ``/app``.

    Only files with a known type are served (anything else, and every directory
    listing, is a JSON 404); ``/app/enroll`` is ``index.html``, the page that an
    enrollment link opens. Each answer carries `APP_CSP`.
    """

    #: By extension; a file whose extension is not here is not served.
    contentTypes = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".webmanifest": "application/manifest+json",
        ".svg": "image/svg+xml",
        ".png": "image/png",
    }
    #: Served as index.html (a page of the app, not a file).
    pages = (b"enroll",)

    def __init__(self, path: str | os.PathLike = WEBAPP_DIR,
                 defaultType: str = "application/octet-stream", *args: Any, **kwargs: Any):
        super().__init__(os.fspath(path), defaultType, *args, **kwargs)
        self.childNotFound = NotFound()
        self.top = True  # the app's own folder, where the pages live

    def createSimilarFile(self, path: str) -> static.File:
        """A file or folder inside the app (not its top folder)."""
        child = super().createSimilarFile(path)
        child.top = False
        return child

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        """A file of the app, ``index.html`` for the app's pages, or a JSON 404."""
        if self.top and path in self.pages:
            return self.createSimilarFile(os.path.join(self.path, "index.html"))
        child = super().getChild(path, request)
        if isinstance(child, static.File) and child.isfile() \
                and child.splitext()[1] not in self.contentTypes:
            return self.childNotFound
        return child

    def directoryListing(self) -> resource.IResource:
        """No listings: a folder without index.html is a 404."""
        return self.childNotFound

    def render(self, request: server.Request) -> bytes | int:
        """Serve the file with the app's Content-Security-Policy."""
        request.setHeader(b"Content-Security-Policy", APP_CSP)
        return super().render(request)
