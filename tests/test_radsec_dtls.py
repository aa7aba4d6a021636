"""RADIUS/DTLS without sockets: stateless cookies, record packing, a whole handshake
between a pyOpenSSL client and the listener over recorded datagrams, with a Clock."""

from __future__ import annotations

import struct

import pytest
from OpenSSL import SSL
from pyrad import packet as rpacket

from pushproxy.radsec.dtls import DTLS_SECRET, DtlsListener, datagrams
from pushproxy.radsec.settings import RadsecConfig
from tests.radsec_pki import TestCA
from tests.test_radsec_units import DICT, make_factory

PEER = ("127.0.0.1", 40000)


class Udp:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dtls")
    ca = TestCA(tmp)
    return ca, ca.issue("server", cn="srv", dns=["srv.test"], server=True), \
        ca.issue("gw", cn="gw", dns=["gw.example.com"])


def listener(pki):
    ca, server, _ = pki
    factory, clock, counters = make_factory(ca)
    config = RadsecConfig(listen=(), cert_file=str(server.cert), key_file=str(server.key),
                          ca_file=str(ca.path), clients=factory.config.clients)
    factory.config = config
    factory.secret = DTLS_SECRET
    dtls = DtlsListener(config, factory, counters, clock)
    dtls.transport = Udp()
    return dtls, factory, clock, counters


def dtls_client(pki):
    ca, _, gw = pki
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate_file(str(gw.cert))
    ctx.use_privatekey_file(str(gw.key))
    ctx.load_verify_locations(str(ca.path))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    ctx.set_options(SSL.OP_NO_QUERY_MTU)
    conn = SSL.Connection(ctx, None)
    conn.set_ciphertext_mtu(1200)
    conn.set_connect_state()
    return conn


def pump_client(conn) -> bytes:
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def test_records_are_packed_into_datagrams_by_record_boundary():
    def rec(n):
        return bytes([22, 0xFE, 0xFD]) + bytes(8) + struct.pack("!H", n) + bytes(n)

    grams = datagrams(rec(500) + rec(500) + rec(500), mtu=1200)
    assert [len(g) for g in grams] == [1026, 513]


def test_a_client_hello_without_cookie_gets_a_hello_verify_request_and_no_state(pki):
    dtls, factory, clock, counters = listener(pki)
    client_conn = dtls_client(pki)
    with pytest.raises(SSL.WantReadError):
        client_conn.do_handshake()
    dtls.datagramReceived(pump_client(client_conn), PEER)
    (reply, addr), = dtls.transport.sent
    assert addr == PEER and reply[13] == 3  # handshake type 3: HelloVerifyRequest
    assert dtls.sessions == {}


def test_junk_from_an_unknown_peer_gets_no_answer_and_no_state(pki):
    dtls, factory, clock, counters = listener(pki)
    dtls.datagramReceived(b"\x16\xfe\xfd" + bytes(40), PEER)
    dtls.datagramReceived(b"hello", PEER)
    assert dtls.transport.sent == [] and dtls.sessions == {}


def test_full_handshake_then_status_server_answered_with_the_dtls_secret(pki):
    dtls, factory, clock, counters = listener(pki)
    conn = dtls_client(pki)
    for _ in range(10):  # flights back and forth until the client is done
        try:
            conn.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        out = pump_client(conn)
        if out:
            dtls.datagramReceived(out, PEER)
        for data, _ in dtls.transport.sent:
            conn.bio_write(data)
        dtls.transport.sent.clear()
        if done and PEER in dtls.sessions and dtls.sessions[PEER].established:
            break
    session = dtls.sessions[PEER]
    assert session.established and session.protocol.client.client.secret == DTLS_SECRET
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, id=5, secret=DTLS_SECRET, dict=DICT,
                             authenticator=bytes(range(16)))
    pkt.add_message_authenticator()
    conn.send(pkt.RequestPacket())
    dtls.datagramReceived(pump_client(conn), PEER)
    for data, _ in dtls.transport.sent:
        conn.bio_write(data)
    reply = conn.recv(4096)
    assert reply[:2] == bytes([rpacket.AccessAccept, 5])
