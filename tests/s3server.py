"""A real S3-compatible server on loopback for the test suite.

``start_s3_server(workdir)`` starts MinIO (built by ``.ci/build-minio.sh``) on a
free ``127.0.0.1`` port with random credentials and waits until it is ready.
When the MinIO binary is absent it falls back, loudly, to moto's standalone
server. No pytest dependency: fixtures wrap this module.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 60.0
REGION = "us-east-1"
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3  # a free port can be taken between probing and the server binding it

# Never route loopback health checks through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def default_minio_bin() -> Path:
    """Where the MinIO binary is looked for: $KOMPRESS_MINIO_BIN, else the build script's output."""
    explicit = os.environ.get("KOMPRESS_MINIO_BIN")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("KOMPRESS_CACHE") or str(Path.home() / ".cache" / "kompress")
    return Path(cache) / "bin" / "minio"


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    kind: str
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _restart: tuple[list[str], dict[str, str], str] | None = field(default=None, repr=False, compare=False)
    """(command, environment, readiness URL): how to start the same server again (same port, data, keys)."""

    def stop(self) -> None:
        """Kill the server (and anything it spawned); safe to call more than once."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill(proc)

    def start_again(self) -> None:
        """After ``stop()``: the same server on the same port with the same data (an outage, not a new one)."""
        assert self._restart is not None and self._proc is None, "start_again() needs a stopped MinIO"
        cmd, env, ready_url = self._restart
        assert self.log_path is not None
        self._proc = _spawn(cmd, env, self.log_path.with_suffix(".restarted.log"))
        _wait_ready(self, self._proc, ready_url, any_status=False)

    def env(self) -> dict[str, str]:
        """Variables that point boto3 (which reads AWS_ENDPOINT_URL natively) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }


def start_s3_server(workdir: Path, host: str = "127.0.0.1") -> S3Server:
    """Start MinIO (or moto when MinIO is absent) on loopback (or `host`: the node tier's private address that
    pods reach); return once it serves requests."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    minio_bin = default_minio_bin()
    if minio_bin.is_file() and os.access(minio_bin, os.X_OK):
        return _start_with_retries(lambda attempt: _start_minio(minio_bin, workdir, attempt, host))
    why = "does not exist" if not minio_bin.exists() else "is not an executable file"
    print(
        f"WARNING: kompress tests: MinIO NOT FOUND: {minio_bin} {why} "
        "(set KOMPRESS_MINIO_BIN or run .ci/build-minio.sh); "
        "FALLING BACK TO moto's S3 server, which is a mock, not a real S3 implementation.",
        file=sys.stderr,
        flush=True,
    )
    return _start_with_retries(lambda attempt: _start_moto(workdir, attempt))


class _EarlyExit(RuntimeError):
    """The server process exited before becoming ready (e.g. its port was taken)."""


def _start_with_retries(start: Callable[[int], S3Server]) -> S3Server:
    last: _EarlyExit | None = None
    for attempt in range(_START_ATTEMPTS):
        try:
            return start(attempt)
        except _EarlyExit as exc:
            last = exc
    assert last is not None
    raise RuntimeError(str(last)) from last


def _start_minio(binary: Path, workdir: Path, attempt: int, host: str = "127.0.0.1") -> S3Server:
    port, console_port = _free_ports(2)
    data_dir = workdir / "minio-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = "kompress-" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update(
        {
            "MINIO_ROOT_USER": access_key,
            "MINIO_ROOT_PASSWORD": secret_key,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "on",
        }
    )
    cmd = [
        str(binary),
        "server",
        "--quiet",
        "--address",
        f"{host}:{port}",
        "--console-address",
        f"127.0.0.1:{console_port}",
        str(data_dir),
    ]
    endpoint = f"http://{host}:{port}"
    log_path = workdir / f"minio-{attempt}.log"
    proc = _spawn(cmd, env, log_path)
    ready_url = f"{endpoint}/minio/health/ready"
    server = S3Server(endpoint, access_key, secret_key, "minio", log_path, proc, (cmd, env, ready_url))
    _wait_ready(server, proc, ready_url, any_status=False)
    return server


def _start_moto(workdir: Path, attempt: int) -> S3Server:
    (port,) = _free_ports(1)
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    endpoint = f"http://127.0.0.1:{port}"
    log_path = workdir / f"moto-{attempt}.log"
    proc = _spawn(cmd, dict(os.environ), log_path)
    # moto accepts any credentials; random ones keep tests honest about passing them through.
    access_key = "kompress-" + secrets.token_hex(6)
    server = S3Server(endpoint, access_key, secrets.token_urlsafe(24), "moto", log_path, proc)
    _wait_ready(server, proc, f"{endpoint}/moto-api/", any_status=True)
    return server


def _free_ports(count: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills children too
        )
    atexit.register(_kill, proc)
    return proc


def _wait_ready(server: S3Server, proc: subprocess.Popen[bytes], url: str, *, any_status: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise _EarlyExit(
                f"{server.kind} server exited with code {proc.returncode} before it was ready "
                f"(cmd: {' '.join(map(str, proc.args))}).\n{_log_tail(server.log_path)}"
            )
        try:
            with _OPENER.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if any_status:
                return
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = repr(exc)
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(
        f"{server.kind} server at {server.endpoint} not ready after {READY_TIMEOUT_S:.0f}s "
        f"({url}: {last_error}).\n{_log_tail(server.log_path)}"
    )


def _log_tail(log_path: Path | None) -> str:
    if log_path is None:
        return "(no log)"
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(log {log_path} unreadable: {exc})"
    tail = "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"
    return f"--- last lines of {log_path} ---\n{tail}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
