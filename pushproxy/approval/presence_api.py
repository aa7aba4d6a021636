"""The presence endpoints of the approval API (docs/presence.md, docs/approval-protocol.md).

Device-authenticated like the rest of ``/v1/device`` (`ApprovalApi._device`):

- ``POST /v1/device/passkey-options``: creation options for a platform passkey
  (a registration challenge, single use, five minutes);
- ``POST /v1/device/passkey`` ``{"credential": PublicKeyCredential JSON}``:
  verify and bind the passkey to the device;
- ``POST /v1/device/presence`` ``{"txid": ..., "decision": "approve"}``: request
  options whose challenge binds the transaction, the decision and the device;
  ``{"decision": "add_device"}``: for "add a device" (``POST /v1/device/enrollment``
  with ``"webauthn"``), which a device with a passkey must pass.

The assertion itself travels in the answer (``POST /v1/device/answer``,
``"webauthn": {...}``) so that it is checked in the answer's own path.
"""

from __future__ import annotations

from twisted.web import server

from pushproxy.approval.presence import Malformed, Refusal, check_shape
from pushproxy.approval.service import ApprovalError


def _bad(message: str) -> ApprovalError:
    return ApprovalError(400, "bad_request", message)


class PresenceApi:
    """The three presence handlers, over the `ApprovalApi` that authenticates devices."""

    def __init__(self, api):
        self.api = api
        self.service = api.service

    async def passkey_options(self, request: server.Request) -> tuple[int, dict]:
        """``POST /v1/device/passkey-options``."""
        device, _ = await self.api._device(request)
        try:
            return 200, {"publicKey": await self.service.presence.creation_options(device)}
        except Refusal as exc:
            raise ApprovalError(409, exc.code, exc.why) from None

    async def passkey(self, request: server.Request) -> tuple[int, dict]:
        """``POST /v1/device/passkey``."""
        from pushproxy.approval.api import _json_object

        device, body = await self.api._device(request)
        fields = _json_object(body)
        try:
            credential = check_shape(fields.get("credential"), registration=True)
            passkey = await self.service.presence.register(device, credential)
        except Malformed as exc:
            raise _bad(str(exc)) from None
        except Refusal as exc:
            self.service.counters.inc("passkeys_refused", code=exc.code)
            raise ApprovalError(403, "passkey_refused", exc.why) from None
        return 201, {"credential_id": passkey.credential_id}

    async def presence(self, request: server.Request) -> tuple[int, dict]:
        """``POST /v1/device/presence``."""
        from pushproxy.approval.api import _json_object, _string

        device, body = await self.api._device(request)
        fields = _json_object(body)
        decision = _string(fields, "decision")
        tx = None
        if decision == "approve":
            tx = await self.service.open_transaction_of(device, _string(fields, "txid"))
            if not tx.context.get("user_verification"):
                raise ApprovalError(409, "not_required", "this request does not need presence")
        elif decision != "add_device":
            raise _bad("presence is asked for approve (with txid) or add_device")
        try:
            return 200, {"publicKey": await self.service.presence.request_options(device, tx)}
        except Refusal as exc:
            raise ApprovalError(409, exc.code, exc.why) from None
