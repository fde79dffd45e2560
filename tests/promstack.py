"""Debian's Prometheus and Pushgateway on loopback for the tests (installed by `make servers`)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        raise RuntimeError(f"{name} is not installed: run `make servers` (Debian packages prometheus, "
                           "prometheus-pushgateway)")
    return path


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            _OPENER.open(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes] = field(repr=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> str:
        return _OPENER.open(self.url + path, timeout=10).read().decode()


def start_pushgateway(workdir: Path, host: str = "127.0.0.1") -> Service:
    port = _free_port()
    log = workdir / "pushgateway.log"
    # Debian's build defaults --persistence.file to /var/lib/prometheus/pushgateway.data, which would carry
    # series from one test run into the next: each gateway persists into its own folder.
    proc = subprocess.Popen([_binary("prometheus-pushgateway"), f"--web.listen-address={host}:{port}",
                             f"--persistence.file={workdir / 'pushgateway.data'}"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    _wait(url + "/-/ready", proc, log)
    return Service(url, proc)


class Prometheus(Service):
    def query(self, expr: str) -> list[dict[str, Any]]:
        body = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        if body.get("status") != "success":
            raise AssertionError(f"PromQL {expr!r} failed: {body}")
        return body["data"]["result"]


def start_prometheus(workdir: Path, jobs: dict[str, str], honor_labels: set[str] | None = None) -> Prometheus:
    """Scrape each job's host:port every second."""
    port = _free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": job, "honor_labels": job in (honor_labels or set()),
                                  "static_configs": [{"targets": [target]}]} for job, target in jobs.items()]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    proc = subprocess.Popen([_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/-/ready", proc, log)
    return Prometheus(url, proc)
