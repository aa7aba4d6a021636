"""The approval HTTP API (docs/approval-protocol.md) as twisted.web resources.

A thin layer over `ApprovalService`: it parses and type-checks JSON, enforces
the body limit, collects the device-authentication headers, and turns results
and `ApprovalError`s into JSON answers. Every decision about enrollment,
signatures and transactions is the service's.

The site's root serves ``/v1/...``; `build_site` mounts the web authenticator
(the static files of ``pushproxy/webapp``) at ``/app``, with a strict
Content-Security-Policy. ``/app/enroll`` is the app's page too: enrollment links
are ``{public_url}/app/enroll#TOKEN``. The HTTP plumbing under it (body limit,
security headers, site, static app) is `pushproxy.approval.web`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from inspect import iscoroutine
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource, server

from pushproxy import logs, passcodes
from pushproxy.metrics import Counters
from pushproxy.approval.crypto import DECISIONS
from pushproxy.approval.presence import Malformed, parse_payload
from pushproxy.approval.ratelimit import FailureLimiter
from pushproxy.approval.service import MAX_WAIT, ApprovalError
from pushproxy.httpdeadline import Deadlines
from pushproxy.approval.web import (WEBAPP_DIR, ApiSite, NotFound, WebApp, client_address,
                                    error_body, header_text, set_json, site_max_body)

log = logging.getLogger("pushproxy.approval.api")


#: The headers of a device-authenticated request, in the order the service takes them.
AUTH_HEADERS = ("X-Device-Id", "X-Timestamp", "X-Nonce", "X-Signature")
_AUTH_HEADERS = tuple((name, name.encode("ascii")) for name in AUTH_HEADERS)


# Plain decimal only: float() would also take "nan", "inf" and "1e1".
_WAIT = re.compile(rb"[0-9]{1,2}(?:\.[0-9]{1,3})?")


#: A handler returns (status, JSON object), or a Deferred or coroutine of it.
_Handler = Callable[[server.Request],
                    "tuple[int, dict] | defer.Deferred | Awaitable[tuple[int, dict]]"]


def _bad_request(message: str) -> ApprovalError:
    return ApprovalError(400, "bad_request", message)


class Endpoint(resource.Resource):
    """One API path: dispatches by method to handlers returning (status, JSON object).

    A handler returns its answer, a Deferred of it or a coroutine (run with
    ``ensureDeferred``); the device requests every phone makes (pending,
    answer) are plain Deferred chains, which cost less CPU per request than a
    coroutine's steps (issue 16). Handlers raise (or fail with) `ApprovalError`
    for refusals; anything else is a 500 with nothing of the exception in the
    answer (it goes to the log).
    """

    isLeaf = True

    def __init__(self, handlers: dict[bytes, _Handler]):
        super().__init__()
        self.handlers = handlers

    def render(self, request: server.Request) -> bytes | int:
        """Answer 404/405 at once, or run the handler and answer when it is done."""
        if request.postpath:  # "/v1/info/" or "/v1/info/x": not this endpoint
            return NotFound().render(request)
        handler = self.handlers.get(request.method)
        if handler is None:
            allowed = b", ".join(sorted(self.handlers))
            request.setHeader(b"Allow", allowed)
            return set_json(request, 405, error_body("method_not_allowed",
                                                  f"allowed: {allowed.decode()}"))
        try:
            result = self._run(handler, request)
        except ApprovalError as exc:  # refused before anything waited (a bad header)
            _respond(_refusal(exc), request)
            return server.NOT_DONE_YET
        except Exception:
            result = defer.fail()
        if not isinstance(result, defer.Deferred):
            _respond(result, request)
            return server.NOT_DONE_YET
        result.addCallbacks(_respond, _failed, callbackArgs=(request,), errbackArgs=(request,))
        # _respond and _failed catch everything; this only keeps a bug there from vanishing.
        result.addErrback(lambda f: logs.event(log, logging.ERROR, "approval.http.serve_failed",
                                               traceback=f.getTraceback()))
        return server.NOT_DONE_YET

    def _run(self, handler: _Handler, request: server.Request):
        """The handler's answer: a value, or a Deferred of it (a coroutine is started)."""
        result = handler(request)
        return defer.ensureDeferred(result) if iscoroutine(result) else result


class DeviceEndpoint(Endpoint):
    """A device-authenticated path (``/v1/device/...``) under the per-source limit.

    A source with too many refused authentications is answered 429 before its
    handler runs. Every 401 a handler ends with counts against the source, here
    and only here, wherever the refusal was made: the signature check
    (`ApprovalApi._device`), or a nonce found used in the store by the request's
    own call later on (a long-poll's list or an answer's compare-and-set at a
    cluster node, `pushproxy.approval.nonceclaim`): a replay to another node
    counts as one to this one does. Other refusals (409 already answered, ...)
    do not count.
    """

    def __init__(self, handlers: dict[bytes, _Handler], limiter: FailureLimiter | None):
        super().__init__(handlers)
        self.limiter = limiter

    def _run(self, handler: _Handler, request: server.Request):
        if self.limiter is None:
            return super()._run(handler, request)
        source = _limit(self.limiter, request)
        try:
            result = super()._run(handler, request)
        except ApprovalError as exc:
            self._refused(Failure(exc), source)
            raise
        if isinstance(result, defer.Deferred):
            result.addErrback(self._refused, source)
        return result

    def _refused(self, failure: Failure, source: str | None) -> Failure:
        if isinstance(failure.value, ApprovalError) and failure.value.status == 401:
            self.limiter.failed(source)
        return failure


def _refusal(exc: ApprovalError) -> tuple[int, dict]:
    status = exc.status if isinstance(exc.status, int) and 400 <= exc.status <= 599 else 500
    return status, error_body(exc.code, exc.message)


def _gone(request: server.Request) -> bool:
    """Whether the client left before its answer was written.

    `Request.connectionLost` drops the channel before it fails the
    ``notifyFinish`` Deferreds, so a long-poll cancelled from one of those
    already finds it gone; no Deferred per request is needed to know.
    """
    return request.channel is None


def _respond(answer: tuple[int, dict], request: server.Request) -> None:
    """Write a handler's (status, JSON object), unless the client left meanwhile."""
    if _gone(request):
        return
    status, obj = answer
    request.write(set_json(request, status, obj))
    request.finish()


def _failed(failure: Failure, request: server.Request) -> None:
    """A handler failed: its refusal, or a logged 500 (nothing when the client left)."""
    if isinstance(failure.value, ApprovalError):
        _respond(_refusal(failure.value), request)
        return
    if _gone(request) and failure.check(defer.CancelledError):
        return  # the long-poll was withdrawn because the client left: nobody to answer
    _log_internal(request, failure)
    _respond((500, {"error": "internal"}), request)


def _log_internal(request: server.Request, failure: Failure) -> None:
    logs.event(log, logging.ERROR, "approval.http.internal_error",
               method=header_text(request.method), path=header_text(request.path),
               error=f"{failure.type.__name__}: {failure.getErrorMessage()}",
               traceback=failure.getTraceback())


def _read_body(request: server.Request) -> bytes:
    limit = site_max_body(request)
    request.content.seek(0)
    # ApiRequest already capped it; read one more octet so another Request class can't slip by.
    data = request.content.read(limit + 1)
    if len(data) > limit:
        raise ApprovalError(413, "too_large", f"request body over {limit} octets")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad_request("the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _bad_request("the body must be a JSON object")
    if b"\\u" not in data:
        # Strict UTF-8 decoding refuses an encoded surrogate, so only a \u escape
        # can make one: without any, the check below (a second pass) is not needed.
        return obj
    try:
        # JSON may escape a lone surrogate ("\ud800"); no UTF-8 text holds one, and
        # signing or storing it would raise deep inside (found by tests/fuzz).
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _bad_request("the body has a string that is not valid Unicode") from None
    return obj


def _string(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise _bad_request(f"{key} must be a string")
    return value


def _subscription(body: dict, *, required: bool) -> dict | None:
    if required and "push_subscription" not in body:
        raise _bad_request("push_subscription is required (null for none)")
    value = body.get("push_subscription")
    if value is not None and not isinstance(value, dict):
        raise _bad_request("push_subscription must be an object or null")
    return value


def _limit(limiter: FailureLimiter | None, request: server.Request) -> str | None:
    """Refuse the request with 429 if its source failed too often; returns the source."""
    source = client_address(request)
    wait = limiter.retry_after(source) if limiter is not None else None
    if wait is not None:
        request.setHeader(b"Retry-After", b"%d" % max(1, math.ceil(wait)))
        raise ApprovalError(429, "too_many_failures",
                            "too many failed attempts from this address; try again later")
    return source


class ApprovalApi:
    """The handlers of the five endpoints, bound to one `ApprovalService`.

    ``enroll_limit`` and ``auth_limit`` count refused enrollments and refused
    device authentications per source address (None: no limit).
    """

    def __init__(self, service: Any, *, enroll_limit: FailureLimiter | None = None,
                 auth_limit: FailureLimiter | None = None,
                 device_links: tuple[str, float] | None = None):
        self.service = service
        self.enroll_limit = enroll_limit
        self.auth_limit = auth_limit
        # (public_url, enrollment_ttl) for "add a device"; None: not offered
        self.device_links = device_links

    async def info(self, request: server.Request) -> tuple[int, dict]:
        """``GET /v1/info``: version, VAPID key, server time (no authentication)."""
        return 200, self.service.info()

    async def enroll(self, request: server.Request) -> tuple[int, dict]:
        """``POST /v1/enroll``: redeem a one-time link for a device key."""
        source = _limit(self.enroll_limit, request)
        try:
            body = _json_object(_read_body(request))
            fields = {key: _string(body, key)
                      for key in ("token", "public_key", "name", "signature")}
            subscription = _subscription(body, required=False)  # absent: same as null
            device = await self.service.enroll(fields["token"], fields["public_key"],
                                               fields["name"], subscription, fields["signature"])
        except ApprovalError:
            if self.enroll_limit is not None:
                self.enroll_limit.failed(source)
            raise
        answer = {"device_id": device.id, "username": device.username,
                  "vapid_public_key": self.service.info()["vapid_public_key"]}
        if device.totp_secret:
            # the only time the server sends the secret: the device keeps it for offline codes
            answer["totp_secret"] = device.totp_secret
            answer["otpauth_uri"] = passcodes.otpauth_uri(device.totp_secret, device.username)
        return 201, answer

    def _device(self, request: server.Request,
                for_answer: bool = False) -> defer.Deferred:
        """Authenticate the request's device: a Deferred of (device, raw body).

        A plain Deferred (no coroutine): every phone request passes here (issue 16).
        The per-source limit (``auth_limit``) is the `DeviceEndpoint`'s: it refuses
        a source that failed too often before this runs, and counts every 401 the
        request ends with, this one's or a later one (a replay found by the store).
        """
        try:
            return self._authenticate(request, for_answer)
        except ApprovalError as exc:
            return defer.fail(exc)

    def _authenticate(self, request: server.Request, for_answer: bool = False) -> defer.Deferred:
        values = []
        headers = request.requestHeaders
        for name, raw_name in _AUTH_HEADERS:
            raw = headers.getRawHeaders(raw_name)  # bytes in, bytes out
            # Exactly one: with two, which one got signed would be ambiguous.
            if not raw or len(raw) != 1 or not raw[0]:
                raise ApprovalError(401, "unauthenticated", f"missing or repeated {name} header")
            try:
                values.append(raw[0].decode("ascii"))
            except UnicodeDecodeError:
                raise ApprovalError(401, "unauthenticated", f"bad {name} header") from None
        body = _read_body(request)
        try:
            # The signed text has the request target exactly as sent: path and query.
            path = request.uri.decode("ascii")
            method = request.method.decode("ascii")
        except UnicodeDecodeError:
            raise _bad_request("the request line is not ASCII") from None
        device_id, timestamp, nonce, signature = values
        d = self.service.authenticate(device_id, timestamp, nonce, signature,
                                      method, path, body, for_answer=for_answer)
        return d.addCallback(lambda device: (device, body))

    def pending(self, request: server.Request) -> defer.Deferred:
        """``GET /v1/device/pending?wait=N``: the open requests; with wait, a long-poll."""
        return self._device(request).addCallback(self._poll, request)

    def _poll(self, authenticated: tuple[Any, bytes], request: server.Request) -> defer.Deferred:
        device, _ = authenticated
        wait = _wait_seconds(request)
        poll = self.service.pending(device, wait)
        if not poll.called:
            # The client gave up (closed the connection): stop waiting for it.
            request.notifyFinish().addErrback(lambda _: poll.cancel())
        return poll.addCallback(self._polled)

    def _polled(self, requests: list[dict]) -> tuple[int, dict]:
        return 200, {"requests": requests, "server_time": self.service.info()["server_time"]}

    def answer(self, request: server.Request) -> defer.Deferred:
        """``POST /v1/device/answer``: a signed approve / deny / fraud."""
        # for_answer: the compare-and-set checks the device in the store again
        return self._device(request, for_answer=True).addCallback(self._answer)

    def _answer(self, authenticated: tuple[Any, bytes]) -> defer.Deferred:
        device, body = authenticated
        fields = _json_object(body)
        txid = _string(fields, "txid")
        decision = _string(fields, "decision")
        signature = _string(fields, "signature")
        number = fields.get("number")
        if number is not None and not isinstance(number, str):
            raise _bad_request("number must be a string of digits")
        if decision not in DECISIONS:
            raise _bad_request(f"decision must be one of {', '.join(DECISIONS)}")
        try:
            # presence: the passkey assertion of an Approve (docs/presence.md)
            webauthn = parse_payload(fields.get("webauthn"))
        except Malformed as exc:
            raise _bad_request(str(exc)) from None
        # Deliberately not cancelled on disconnect: a half-recorded answer could
        # leave the waiting login hanging until its timeout.
        d = self.service.answer(device, txid, decision, signature, number,
                                **({"webauthn": webauthn} if webauthn else {}))
        return d.addCallback(_recorded)

    async def device_link(self, request: server.Request) -> tuple[int, dict]:
        """``POST /v1/device/enrollment``: a one-time link for another device of this
        device's user (pushproxy.approval.adddevice)."""
        device, body = await self._device(request)
        if self.device_links is None:
            raise ApprovalError(404, "not_found", "adding devices is not offered here")
        from pushproxy.approval.adddevice import new_device_link
        from pushproxy.approval.presence import Refusal

        try:
            # a device with a passkey adds one only with its face or fingerprint
            webauthn = parse_payload(_json_object(body or b"{}").get("webauthn"))
            await self.service.presence.check_add_device(device, webauthn)
        except Malformed as exc:
            raise _bad_request(str(exc)) from None
        except Refusal as exc:
            raise ApprovalError(403, "presence_not_verified", exc.why) from None

        return 201, await new_device_link(self.service, device, *self.device_links)

    async def subscription(self, request: server.Request) -> tuple[int, dict]:
        """``PUT /v1/device/subscription``: replace (or clear) the Web Push subscription."""
        device, body = await self._device(request)
        subscription = _subscription(_json_object(body), required=True)
        await self.service.set_subscription(device, subscription)
        return 200, {"status": "updated"}


def _recorded(answer: dict | None) -> tuple[int, dict]:
    return 200, answer or {"status": "recorded"}


def _wait_seconds(request: server.Request) -> float:
    values = request.args.get(b"wait")
    if values is None:
        return 0.0
    if len(values) != 1 or not _WAIT.fullmatch(values[0]):
        raise _bad_request(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    wait = float(values[0])
    if wait > MAX_WAIT:
        raise _bad_request(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return wait


class ApiRoot(resource.Resource):
    """The site root: ``/v1`` is the API, anything unknown is a JSON 404.

    `build_site` mounts the web authenticator at ``/app`` with ``putChild``.
    """

    def __init__(self, api: ApprovalApi):
        super().__init__()
        v1 = _Directory()
        v1.putChild(b"info", Endpoint({b"GET": api.info}))
        v1.putChild(b"enroll", Endpoint({b"POST": api.enroll}))
        device = _Directory()
        from pushproxy.approval.presence_api import PresenceApi

        presence = PresenceApi(api)
        for name, method, handler in (
                (b"pending", b"GET", api.pending), (b"answer", b"POST", api.answer),
                (b"subscription", b"PUT", api.subscription),
                (b"enrollment", b"POST", api.device_link),
                (b"passkey-options", b"POST", presence.passkey_options),
                (b"passkey", b"POST", presence.passkey),
                (b"presence", b"POST", presence.presence)):
            # every one device-authenticated (ApprovalApi._device), under auth_limit
            device.putChild(name, DeviceEndpoint({method: handler}, api.auth_limit))
        v1.putChild(b"device", device)
        self.putChild(b"v1", v1)

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        """Unknown child: 404."""
        return NotFound()

    def render(self, request: server.Request) -> bytes:
        """``/`` itself: 404 (nothing lives there)."""
        return NotFound().render(request)


class _Directory(resource.Resource):
    """An inner path segment (``/v1``, ``/v1/device``): only its children exist."""

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        return NotFound()

    def render(self, request: server.Request) -> bytes:
        return NotFound().render(request)


def build_site(service: Any, *, max_body: int, reactor: Any,
               app: str | os.PathLike | None = WEBAPP_DIR, counters: Counters | None = None,
               max_failures: int = 10, failure_window: float = 300.0,
               trusted_proxies: tuple = (), deadlines: Deadlines = Deadlines(),
               device_links: tuple[str, float] | None = None) -> ApiSite:
    """The approval API as a Site for ``reactor.listenTCP`` / ``listenSSL``.

    ``max_body`` is ``approval.max_body``. ``site.resource`` is the `ApiRoot`,
    with the web authenticator (`WebApp` of the folder ``app``) at ``/app``;
    ``app=None`` leaves ``/app`` free (a 404). ``max_failures`` refused
    enrollments (or device authentications) from one address within
    ``failure_window`` seconds make it wait (``approval.max_failures``, 0: off).
    ``trusted_proxies`` (networks) are reverse proxies whose X-Forwarded-For
    names the client (``approval.trusted_proxies``). ``deadlines`` bound how
    long reading a request may take (``approval.header_timeout``, ...).
    """
    counters = counters if counters is not None else getattr(service, "counters", Counters())
    limits = {kind: FailureLimiter(clock=reactor, counters=counters, kind=kind,
                                   max_failures=max_failures, window=failure_window)
              for kind in ("enroll", "device_auth")}
    root = ApiRoot(ApprovalApi(service, enroll_limit=limits["enroll"],
                               auth_limit=limits["device_auth"], device_links=device_links))
    if app is not None:
        root.putChild(b"app", WebApp(app))
    return ApiSite(root, max_body=max_body, reactor=reactor, trusted_proxies=trusted_proxies,
                   deadlines=deadlines, counters=counters)
