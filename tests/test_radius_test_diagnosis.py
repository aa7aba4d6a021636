"""`pushproxy radius-test` says why there was no answer, from what it can see (issue 17).

Real UDP sockets on loopback: a server that signs with another secret, a port
with nothing listening, and a server that stays silent (what pushproxy does
for an unknown client or a wrong secret).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from pyrad import packet as rpacket

from pushproxy.radius import codec


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", "radius-test", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_reply_signed_with_another_secret_is_reported_as_a_wrong_secret():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(20)
    port = sock.getsockname()[1]

    def answer_with_the_wrong_secret():
        data, peer = sock.recvfrom(4096)
        request = rpacket.AuthPacket(packet=data, secret=b"the-servers-secret",
                                     dict=codec.load_dictionary())
        reply = request.CreateReply()
        reply.code = rpacket.AccessReject
        sock.sendto(reply.ReplyPacket(), peer)

    thread = threading.Thread(target=answer_with_the_wrong_secret, daemon=True)
    thread.start()
    try:
        out = cli("alice", "pw", "--server", f"127.0.0.1:{port}", "--secret",
                  "my-different-secret", "--timeout", "3")
    finally:
        thread.join(5)
        sock.close()
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no answer" in out.stdout
    assert "did not verify" in out.stdout and "the shared secret is wrong" in out.stdout


def test_a_closed_port_is_reported_as_nothing_listening():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = cli("alice", "pw", "--server", f"127.0.0.1:{port}", "--secret", "s" * 16,
              "--timeout", "2")
    assert out.returncode == 2
    assert "nothing listens on that port" in out.stdout, out.stdout


def test_silence_lists_unknown_client_wrong_secret_and_firewall_with_our_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        out = cli("alice", "pw", "--server", f"127.0.0.1:{port}", "--secret", "s" * 16,
                  "--timeout", "2")
    assert out.returncode == 2
    text = out.stdout
    assert "no answer within 2 s" in text
    assert "this machine's address (127.0.0.1) is in no radius.clients entry" in text
    assert "reason=unknown_client" in text and "reason=bad_message_authenticator" in text
    assert "firewall" in text
