"""Worker processes: ``daemon.workers: N`` runs N daemons under one supervisor.

One Twisted process uses one core. With ``daemon.workers`` > 1, ``pushproxy
serve`` becomes a supervisor that starts N workers (``pushproxy serve
--worker I``, same config). Each worker is today's daemon: it binds the RADIUS
ports and the approval port with SO_REUSEPORT (`pushproxy.reuseport`), serves
/metrics and /healthz on ``daemon.metrics_listen``'s port + I, and worker 0
alone runs the LDAP front end. The workers share their state through the store.

The supervisor holds no socket of the service. It

- restarts a worker that died, after a backoff that doubles while workers die
  soon after their start (`RestartPolicy`), counted and logged; a worker that
  dies before it ever became ready ``max_start_failures`` times in a row makes
  the supervisor stop everything and exit 1 (a broken config, a port in use);
- forwards SIGHUP (reload) to every worker, and on SIGTERM/SIGINT asks every
  worker to stop (each drains as a single daemon does) and exits 0 once all
  have exited cleanly;
- speaks sd_notify for the service: READY=1 once every worker said it is ready,
  RELOADING=1 until every worker reloaded, and WATCHDOG=1 only while every
  worker is alive and has pinged within WatchdogSec.

Workers talk to the supervisor with sd_notify's own messages ("READY=1",
"WATCHDOG=1", ...), one per line, on a pipe at descriptor `CHANNEL_FD`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field

from twisted.internet import defer, protocol, task

from pushproxy import logs

log = logging.getLogger("pushproxy.workers")

#: The worker's end of its pipe to the supervisor.
CHANNEL_FD = 3
#: The supervisor's process id, in its workers' environment.
SUPERVISOR_ENV = "PUSHPROXY_SUPERVISOR_PID"


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a dead worker, and when to give up."""

    first_delay: float = 0.5  # seconds before the first restart
    max_delay: float = 30.0
    stable: float = 30.0  # a worker up this long counts as healthy: its backoff resets
    max_start_failures: int = 5  # deaths before READY in a row, for one worker

    def delay(self, quick_deaths: int) -> float:
        """The pause before a restart after ``quick_deaths`` (>= 1) deaths in a row."""
        return min(self.max_delay, self.first_delay * 2 ** max(0, quick_deaths - 1))


@dataclass
class Slot:
    """What the supervisor knows about one worker index."""

    index: int
    process: object = None  # the running process's transport, None while dead
    started: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    quick_deaths: int = 0  # deaths soon after a start, in a row (backoff)
    start_failures: int = 0  # deaths before READY, in a row (giving up)
    restarts: int = 0
    pending_restart: object = None  # the delayed call that will restart it
    exit_codes: list = field(default_factory=list)


class Supervisor:
    """Starts, watches and restarts ``count`` workers; see the module docstring.

    ``spawn(index, supervisor)`` starts worker ``index`` and returns its process
    transport (``signalProcess``, ``pid``); the process reports back through
    `message` and `exited`. ``notify`` sends a message to systemd.
    """

    def __init__(self, clock, count: int, spawn, notify, *, policy: RestartPolicy | None = None,
                 watchdog: float | None = None, stop_timeout: float = 60.0):
        self.clock = clock
        self.spawn = spawn
        self.notify = notify
        self.policy = policy or RestartPolicy()
        self.watchdog = watchdog  # systemd's ping interval, None when not asked
        self.stop_timeout = stop_timeout  # then stragglers get SIGKILL
        self.slots = [Slot(i) for i in range(count)]
        self.announced = False  # READY=1 sent
        self.reloading: set[int] = set()
        self.stopping = False
        self.exit_code = 0
        self.done = defer.Deferred()  # fires with the exit code once every worker is gone
        self._watchdog_loop = None
        self._kill_call = None

    # life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker (and the watchdog loop, when systemd asked for one)."""
        for slot in self.slots:
            self._start(slot)
        if self.watchdog:
            self._watchdog_loop = task.LoopingCall(self._ping)
            self._watchdog_loop.clock = self.clock
            self._watchdog_loop.start(self.watchdog, now=False)

    def _start(self, slot: Slot) -> None:
        slot.pending_restart = None
        slot.ready = False
        slot.started = slot.last_ping = self.clock.seconds()
        slot.process = self.spawn(slot.index, self)
        logs.event(log, logging.INFO, "worker.started", worker=slot.index,
                   pid=getattr(slot.process, "pid", None), restarts=slot.restarts or None)

    def message(self, index: int, line: str) -> None:
        """A line from worker ``index``: sd_notify fields, e.g. "READY=1"."""
        slot = self.slots[index]
        fields = dict(part.split("=", 1) for part in line.split("\n") if "=" in part)
        slot.last_ping = self.clock.seconds()
        if fields.get("READY") == "1":
            slot.ready = True
            slot.start_failures = 0
            self.reloading.discard(index)
            self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.stopping or self.reloading:
            return
        if all(slot.ready for slot in self.slots):
            if not self.announced:
                logs.event(log, logging.INFO, "workers.ready", workers=len(self.slots))
            self.announced = True
            self.notify(f"READY=1\nSTATUS=serving with {len(self.slots)} workers")

    def exited(self, index: int, code: int | None, sig: int | None) -> None:
        """Worker ``index`` ended with exit ``code`` or by signal ``sig``."""
        slot = self.slots[index]
        now = self.clock.seconds()
        was_ready, uptime = slot.ready, now - slot.started
        slot.process, slot.ready = None, False
        slot.exit_codes.append(code if sig is None else -sig)
        self.reloading.discard(index)
        if self.stopping:
            if code != 0:
                self.exit_code = 1
            logs.event(log, logging.INFO if code == 0 else logging.WARNING, "worker.stopped",
                       worker=index, code=code, signal=sig)
            self._maybe_done()
            return
        slot.quick_deaths = 0 if uptime >= self.policy.stable else slot.quick_deaths + 1
        slot.quick_deaths = max(slot.quick_deaths, 1)
        if not was_ready:
            slot.start_failures += 1
        if slot.start_failures >= self.policy.max_start_failures:
            logs.event(log, logging.ERROR, "workers.giving_up", worker=index, code=code,
                       signal=sig, failures=slot.start_failures,
                       problem="the worker keeps dying before it is ready")
            self.exit_code = 1
            self.stop()
            return
        delay = self.policy.delay(slot.quick_deaths)
        slot.restarts += 1
        logs.event(log, logging.ERROR, "worker.died", worker=index, code=code, signal=sig,
                   uptime_s=round(uptime, 1), restart_in_s=delay, restarts=slot.restarts)
        self.notify(f"STATUS=worker {index} died; restarting in {delay:g} s")
        slot.pending_restart = self.clock.callLater(delay, self._start, slot)

    def reload(self) -> None:
        """Forward SIGHUP to every live worker; READY=1 once each has reloaded."""
        if self.stopping:
            return
        from pushproxy import sdnotify

        self.notify(sdnotify.reloading_message())
        # Only ready workers: one still starting reads the new file anyway, and a
        # SIGHUP before its handler is installed would kill it.
        self.reloading = {slot.index for slot in self.slots if slot.ready}
        for slot in self.slots:
            if slot.index in self.reloading:
                slot.ready = False  # until it says READY=1 again
                self._signal(slot, signal.SIGHUP)
        logs.event(log, logging.INFO, "workers.reload", workers=len(self.reloading))
        self._maybe_ready()

    def stop(self) -> defer.Deferred:
        """Ask every worker to stop (SIGTERM: each drains); fires with the exit code."""
        if not self.stopping:
            self.stopping = True
            self.notify("STOPPING=1")
            if self._watchdog_loop is not None and self._watchdog_loop.running:
                self._watchdog_loop.stop()
            for slot in self.slots:
                if slot.pending_restart is not None:
                    slot.pending_restart.cancel()
                    slot.pending_restart = None
                if slot.process is not None:
                    self._signal(slot, signal.SIGTERM)
            self._kill_call = self.clock.callLater(self.stop_timeout, self._kill_stragglers)
            self._maybe_done()
        return self.done

    def _kill_stragglers(self) -> None:
        self._kill_call = None
        for slot in self.slots:
            if slot.process is not None:
                logs.event(log, logging.ERROR, "worker.killed", worker=slot.index,
                           problem=f"still running {self.stop_timeout:g} s after SIGTERM")
                self.exit_code = 1
                self._signal(slot, signal.SIGKILL)

    def _maybe_done(self) -> None:
        if self.stopping and all(slot.process is None for slot in self.slots) \
                and not self.done.called:
            if self._kill_call is not None and self._kill_call.active():
                self._kill_call.cancel()
            logs.event(log, logging.INFO, "workers.stopped", code=self.exit_code)
            self.done.callback(self.exit_code)

    def _signal(self, slot: Slot, sig: int) -> None:
        try:
            slot.process.signalProcess(sig)
        except Exception as exc:  # already gone: its exit is on its way
            logs.event(log, logging.DEBUG, "worker.signal_failed", worker=slot.index,
                       error=str(exc))

    def _ping(self) -> None:
        """WATCHDOG=1 only while every worker runs and pinged within twice the interval."""
        now = self.clock.seconds()
        if all(slot.process is not None and now - slot.last_ping <= 2 * self.watchdog
               for slot in self.slots):
            self.notify("WATCHDOG=1")


class WorkerProcess(protocol.ProcessProtocol):
    """The supervisor's side of one worker: its channel lines and its end."""

    def __init__(self, index: int, supervisor: Supervisor):
        self.index = index
        self.supervisor = supervisor
        self._buffer = b""

    def childDataReceived(self, fd, data):
        """Lines on the channel pipe are sd_notify messages; a blank line ends one."""
        if fd != CHANNEL_FD:
            return
        self._buffer += data
        while b"\n\n" in self._buffer:
            message, self._buffer = self._buffer.split(b"\n\n", 1)
            self.supervisor.message(self.index, message.decode("utf-8", "replace"))

    def processEnded(self, reason):
        """Report the exit code or the signal."""
        value = reason.value
        self.supervisor.exited(self.index, getattr(value, "exitCode", None),
                               getattr(value, "signal", None))


def worker_env(environ=None) -> dict:
    """The worker's environment: systemd's variables are the supervisor's to use.

    WATCHDOG_USEC stays (the worker pings its supervisor at that pace);
    NOTIFY_SOCKET and WATCHDOG_PID go, so only the main process talks to systemd
    (the unit's NotifyAccess=main).
    """
    env = dict(os.environ if environ is None else environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_PID", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[SUPERVISOR_ENV] = str(os.getpid())  # die_with_parent checks it is still there
    return env


def spawner(reactor, config_path: str):
    """A `Supervisor` spawn function running ``pushproxy serve --worker I``."""

    def spawn(index: int, supervisor: Supervisor):
        argv = [sys.executable, "-m", "pushproxy.cli", "serve", "--config", config_path,
                "--worker", str(index)]
        return reactor.spawnProcess(WorkerProcess(index, supervisor), sys.executable, argv,
                                    env=worker_env(), childFDs={0: 0, 1: 1, 2: 2,
                                                                CHANNEL_FD: "r"})
    return spawn


# the worker's side -------------------------------------------------------------------------
def worker_notifier(fd: int = CHANNEL_FD):
    """A `pushproxy.sdnotify.notify` stand-in for a worker: the message goes to the supervisor."""

    def notify(message: str) -> bool:
        try:
            os.write(fd, message.encode("utf-8") + b"\n\n")
        except OSError:  # the supervisor is gone: PR_SET_PDEATHSIG stops us anyway
            return False
        return True
    return notify


def stop_reactor(reactor) -> None:
    """Stop ``reactor`` once, deaf to SIGTERM and SIGINT from now on.

    Twisted's own handlers answer those signals with ``reactor.stop()``, which
    raises (and logs a traceback) once the reactor is already stopping: a
    worker whose start failed is often sent SIGTERM by the supervisor, which
    is giving up on it, at the same moment. The process is ending either way.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if reactor.running:
        reactor.stop()


def die_with_parent(environ=None) -> None:
    """Ask Linux for SIGTERM when the supervisor dies (a graceful stop, not an orphan)."""
    environ = os.environ if environ is None else environ
    try:
        parent = int(environ.get(SUPERVISOR_ENV, ""))
    except ValueError:
        parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker may outlive a killed supervisor
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def tag_logs(index: int) -> None:
    """Add ``worker=I`` to every log line of this process."""

    class _Tag(logging.Filter):
        def filter(self, record):
            if not getattr(record, "_worker_tagged", False):
                record._worker_tagged = True
                record.msg = f"{record.getMessage()} worker={index}"
                record.args = None
                fields = getattr(record, "fields", None)
                if isinstance(fields, dict):
                    record.fields = {**fields, "worker": index}
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_Tag())


# the supervisor's entry ------------------------------------------------------------------
def supervise(config_path: str, config) -> int:
    """Run the supervisor for ``config`` until SIGTERM/SIGINT; its exit code."""
    from twisted.internet import reactor

    from pushproxy import sdnotify
    from pushproxy.approval.backends import open_store

    try:
        # Migrations run here, once, before workers race to apply them.
        open_store(config.approval.database, password=config.approval.database_password,
                   timeout=5.0).close()
    except Exception as exc:  # startup failures: say what, exit non-zero
        logs.event(log, logging.ERROR, "startup.failed", error=str(exc))
        return 1
    # Each worker may take daemon.stop_grace plus an LDAP round to drain.
    grace = config.daemon.stop_grace + config.ldap.connect_timeout + \
        config.ldap.response_timeout + 10
    supervisor = Supervisor(reactor, config.daemon.workers, spawner(reactor, config_path),
                            sdnotify.notify, watchdog=sdnotify.watchdog_interval(),
                            stop_timeout=grace)

    def reload():
        from pushproxy.config import ConfigError, load_config

        try:
            new = load_config(config_path)
        except ConfigError:
            pass  # every worker refuses it too, and says why
        else:
            if new.daemon.workers != config.daemon.workers:
                logs.event(log, logging.WARNING, "reload.needs_restart",
                           what="daemon.workers changed: restart to apply")
        supervisor.reload()

    shutting_down = []

    def finished(code):
        if not shutting_down:  # the supervisor gave up on its own: end the reactor too
            stop_reactor(reactor)

    def stopping():
        shutting_down.append(True)
        return supervisor.stop()

    supervisor.done.addCallback(finished)
    reactor.callWhenRunning(supervisor.start)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    logs.event(log, logging.INFO, "workers.starting", workers=config.daemon.workers,
               pid=os.getpid())
    reactor.run()
    return supervisor.exit_code
