"""The approval answer path: the RADIUS reply leaves right after the decision's
audit record and log line (so both hold every reply sent, and whoever reads them
after the reply finds it), and the approval service releases the waiting login
before its own log line (issue 16)."""

import logging
import os

from pushproxy.audit import AuditLog
from pushproxy.decision import PushStatus
from pushproxy.radius import codec
from tests.approval.test_service_security import enrolled, env, login, pending, value  # noqa: F401
from tests.test_radius_server import NAS, make, request, verify


class OrderAudit(AuditLog):
    """Notes how many datagrams were out when each event was recorded."""

    def __init__(self, transport, counters):
        super().__init__(os.devnull, counters)
        self.transport = transport
        self.sent_at_record = []

    def record(self, event):
        self.sent_at_record.append(len(self.transport.sent))
        super().record(event)


def test_the_accept_is_written_once_right_after_its_audit_record_and_log_line(caplog):
    caplog.set_level(logging.INFO, logger="pushproxy")
    proto, clock = make()
    audit = OrderAudit(proto.transport, proto.counters)
    proto.engine.audit = audit
    sent_at_log = []

    class Spy(logging.Handler):
        def emit(self, record):
            if "login.decision" in record.getMessage():
                sent_at_log.append(len(proto.transport.sent))

    spy = Spy()
    logging.getLogger("pushproxy").addHandler(spy)
    try:
        pkt, raw = request()
        proto.datagramReceived(raw, NAS)
        proto.engine.provider.answer(status=PushStatus.APPROVED)
    finally:
        logging.getLogger("pushproxy").removeHandler(spy)
    (data, addr), = proto.transport.sent  # once: not written again by the server
    assert verify(pkt, data).code == codec.ACCESS_ACCEPT
    assert audit.sent_at_record == [0]
    assert sent_at_log == [0]
    proto.datagramReceived(raw, NAS)  # a retransmit gets the cached reply
    assert proto.transport.sent[1][0] == data


def test_the_service_releases_the_login_before_it_logs_the_answer(env, caplog):  # noqa: F811
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    seen = []

    class Spy(logging.Handler):
        def emit(self, record):
            if "approval.answered" in record.getMessage():
                seen.append(list(got))

    caplog.set_level(logging.INFO, logger="pushproxy.approval")
    spy = Spy()
    logging.getLogger("pushproxy.approval").addHandler(spy)
    try:
        value(service.answer(phone.device, tx["txid"], "approve",
                             phone.answer_sig(tx, "approve")))
    finally:
        logging.getLogger("pushproxy.approval").removeHandler(spy)
    assert len(seen) == 1 and seen[0] and seen[0][0].status is PushStatus.APPROVED
