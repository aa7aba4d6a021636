"""A device request's nonce, claimed in the store together with the request's own call.

A cluster node records every device-request nonce in the shared store, so a
request replayed to another node is refused (`claim_device_nonce`). The two
requests of every approval, the long-poll (or list) and the answer, read or
write the store anyway; there the claim travels with that call, in one
transaction (`claim_and_list_waiting`, `claim_and_answer`), instead of a call
of its own. Nothing is served before the claim: the list is read only when the
nonce was new, the answer's compare-and-set runs only then, and any other end
of an answer request (an error) claims the nonce first.

`authenticate` hands such a request's handler a `ClaimDue` device (a `Device`
with its request's unclaimed nonce): only for ``GET /v1/device/pending`` and an
answer, the handlers that claim it (`pending_path`). Every other request is
claimed before it is authenticated, as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pushproxy.approval.store import Device

PENDING_PATH = "/v1/device/pending"


class Nonce:
    """A request's nonce, to be claimed once (``claimed`` set when the claim is asked)."""

    __slots__ = ("value", "expires", "claimed")

    def __init__(self, value: str, expires: float):
        self.value = value
        self.expires = expires
        self.claimed = False


@dataclass(frozen=True)
class ClaimDue(Device):
    """The authenticated device of one request whose nonce is not claimed yet."""

    nonce: Nonce | None = field(default=None, repr=False, compare=False)


def pending_path(method: str, path: str) -> bool:
    """Whether the signed request target is the long-poll/list endpoint."""
    return method == "GET" and path.split("?", 1)[0] == PENDING_PATH


def claim_due(device: Device, nonce: str, expires: float) -> ClaimDue:
    """``device`` carrying its request's nonce, to be claimed by the handler."""
    fields = {f.name: getattr(device, f.name) for f in dataclasses.fields(Device)}
    return ClaimDue(**fields, nonce=Nonce(nonce, expires))


def due(device: Device) -> Nonce | None:
    """The request's nonce if it still has to be claimed, else None."""
    nonce = getattr(device, "nonce", None) if isinstance(device, ClaimDue) else None
    return nonce if nonce is not None and not nonce.claimed else None
