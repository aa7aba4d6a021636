"""The benchmark's phones: many enrolled devices answering through the real approval API.

Run as its own process (``python -m bench.devices JOB.json RESULT.json``) so it
does not share a CPU time slice with the load generator or the daemon. A job
names users in the order their logins will arrive; ``window`` workers each
take the next user, long-poll ``GET /v1/device/pending?wait=N`` as that
user's device, and answer what appears with a signed ``POST
/v1/device/answer`` -- exactly the protocol of docs/approval-protocol.md,
signed with `pushproxy.approval.crypto` like the command-line authenticator.
The long-polls run ahead of the logins (a phone waits before its user logs
in), so a request is answered as soon as it appears.

HTTP/1.1 keep-alive is spoken directly over asyncio streams (one connection
per worker): a full HTTP client library would cost more CPU than the daemon's
side of the exchange, and the two share this machine's two cores.

Every device shares one P-256 key (the job's ``key_pem``); each has its own
device id, so the server checks every signature against the device's stored
public key as usual. For each answered login the result records when the
request was seen, when the answer was sent and when its response came back,
all on ``time.monotonic()``, the clock the load generator stamps replies with.

The process prints ``ready`` once its workers run, and stops at the job's
deadline or on SIGTERM, writing the result file either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from cryptography.hazmat.primitives import serialization

from pushproxy.approval import crypto


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def _connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, method: str, target: str, headers: dict[str, str],
                      body: bytes = b"") -> tuple[int, bytes]:
        """Send one request and read the whole response (Content-Length framed)."""
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
        for attempt in range(2):
            if self.writer is None:
                await self._connect()
            try:
                self.writer.write(data)
                raw = await self.reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, payload


class Devices:
    """The job: users to serve, their device ids, the shared key, the decision."""

    def __init__(self, job: dict):
        self.job = job
        self.key = serialization.load_pem_private_key(job["key_pem"].encode(), password=None)
        self.device_ids: dict[str, str] = job["device_ids"]
        self.host, self.port = job["host"], job["port"]
        self.decision = job.get("decision", "approve")
        self.wait = float(job.get("wait", 30))
        self.per_user = float(job.get("per_user_timeout", 120))
        self.queue = list(reversed(job["users"]))
        self.records: list[dict] = []
        self.errors: dict[str, int] = {}
        self.missed: list[str] = []
        self.stopping = False

    def _signed(self, user: str, method: str, target: str, body: bytes) -> dict[str, str]:
        headers = crypto.device_headers(self.key, self.device_ids[user], method, target, body)
        headers["Accept"] = "application/json"
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def worker(self):
        conn = HttpConnection(self.host, self.port)
        try:
            while self.queue and not self.stopping:
                await self.serve(conn, self.queue.pop())
        finally:
            conn.close()

    async def serve(self, conn: HttpConnection, user: str) -> None:
        deadline = time.monotonic() + self.per_user
        target = f"/v1/device/pending?wait={self.wait:g}"
        entries = []
        while not self.stopping and time.monotonic() < deadline:
            try:
                status, body = await conn.request(
                    "GET", target, self._signed(user, "GET", target, b""))
            except (OSError, asyncio.IncompleteReadError) as exc:
                self._error(f"poll:{type(exc).__name__}")
                conn.close()
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                self._error(f"poll:http_{status}")
                await asyncio.sleep(0.1)
                continue
            entries = json.loads(body)["requests"]
            if entries:
                break
        seen = time.monotonic()
        if not entries:
            self.missed.append(user)
            return
        for entry in entries:
            text = crypto.answer_text(entry["txid"], entry["nonce"], self.decision,
                                      entry["username"], self.device_ids[user])
            body = json.dumps({"txid": entry["txid"], "decision": self.decision,
                               "signature": crypto.sign(self.key, text)}).encode()
            headers = self._signed(user, "POST", "/v1/device/answer", body)
            sent = time.monotonic()
            try:
                status, _ = await conn.request("POST", "/v1/device/answer", headers, body)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self._error(f"answer:{type(exc).__name__}")
                conn.close()
                continue
            done = time.monotonic()
            if status != 200:
                self._error(f"answer:http_{status}")
            self.records.append({"user": user, "txid": entry["txid"], "seen": seen,
                                 "sent": sent, "done": done, "status": status})

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.workers = [asyncio.ensure_future(self.worker())
                        for _ in range(max(1, int(self.job.get("window", 64))))]
        print("ready", flush=True)
        started = time.monotonic()
        _, late = await asyncio.wait(self.workers, timeout=float(self.job.get("deadline", 600)))
        if late:
            self._error("deadline")
        self.stop()
        await asyncio.gather(*self.workers, return_exceptions=True)
        return {"records": self.records, "errors": self.errors,
                "missed": self.missed + list(reversed(self.queue)),
                "elapsed": time.monotonic() - started}

    def stop(self) -> None:
        """Finish now: workers still waiting on a long-poll are cancelled."""
        self.stopping = True
        for task in getattr(self, "workers", []):
            task.cancel()


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    with open(job_path, encoding="utf-8") as f:
        devices = Devices(json.load(f))
    result = asyncio.run(devices.run())
    tmp = result_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
