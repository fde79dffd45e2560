"""A stand-in kubelet for the end-to-end tier: runs the Pods of the loopback
control plane (``cluster.py``) as local processes.

Usage::

    kubelet = FakeKubelet(cluster, extra_env={}, workdir=tmp_path).start()
    try:
        ...  # create Jobs; the Job controller's pods run here
        print(kubelet.logs("ns", "pod-name"))
    finally:
        kubelet.stop()

What it imitates (one watch thread plus one thread per pod, standard library only):

* Node registration: a Node ``fake-node`` (``node_name``) with condition Ready=True
  and capacity/allocatable cpu, memory, pods and ``nvidia.com/gpu: 1``. There is
  no scheduler, so it also plays the scheduler: every Pending pod without
  ``spec.nodeName`` (and with the default ``schedulerName``) is bound to the node
  through ``POST pods/<name>/binding``. Pods created with ``spec.nodeName`` equal to
  the node are run too. Nothing is filtered: node selectors, affinity, taints and
  resource requests (GPUs included) are not checked.
* Pod watch over HTTPS (the cluster's CA and bearer token): list, then
  ``watch=1&resourceVersion=...``; a closed stream resumes from the last
  resourceVersion (bookmarks included); 410 Gone (or an ERROR event) relists.
* Pod status through the ``pods/status`` subresource (JSON merge patches):
  Pending with ``waiting: ContainerCreating`` while the pod waits for one of the
  ``max_parallel`` slots; Running (startTime, conditions Ready/ContainersReady,
  ``containerStatuses[0].state.running``) once the process started; then phase
  Succeeded (exit 0) or Failed with ``state.terminated`` {exitCode, reason
  Completed/Error, message, startedAt, finishedAt}. A process killed by signal N
  reports exit code 128+N, like a container runtime.
* Termination message: the container's ``terminationMessagePath`` (default
  ``/dev/termination-log``) is an empty local file; its content, truncated to
  4096 bytes, becomes ``terminated.message``. With ``terminationMessagePolicy:
  FallbackToLogsOnError``, an empty file and a non-zero exit, the message is the
  log tail (the last 80 lines, at most 2048 bytes, as the kubelet does).
* The first container only: ``command + args`` (``$(VAR)`` references expanded
  against the container's env, ``$$`` escapes) run as a local process; a leading
  ``kompress`` becomes ``[sys.executable, "-m", "kompress.jobs.cli"]``, any other
  executable is looked up on PATH (not found: Failed, reason StartError, exit 128,
  as restartPolicy Never does). An empty ``command`` (the image's entrypoint)
  also fails with StartError.
* Environment: ``os.environ`` minus ``AWS_*`` and ``KUBECONFIG``, plus ``extra_env``,
  plus ``HOSTNAME`` = pod name, plus the container's ``envFrom`` (secretRef and
  configMapRef, with ``prefix``) and ``env`` (``value``, ``valueFrom.secretKeyRef``,
  ``configMapKeyRef``, ``fieldRef`` for metadata.name/namespace/uid,
  spec.nodeName/serviceAccountName), read from the API; Secret values are
  base64-decoded. A missing Secret/ConfigMap/key that is not ``optional`` keeps the
  pod Pending with ``waiting: CreateContainerConfigError`` and is retried every 2 s.
* Volumes: every ``volumeMounts[].mountPath`` (whatever the volume's type, it
  behaves as an empty ``emptyDir``; ``subPath`` honoured; two mounts of one volume
  share a folder) and the termination message path are fresh local folders/files
  under ``workdir/pods/``; occurrences of those paths in args, env values and
  ``workingDir`` are rewritten to the local ones. The process's working directory
  is ``workingDir`` if it maps to a local folder, else the pod's folder.
* Output: stdout and stderr, combined, in ``workdir/logs/<ns>_<pod>.log``
  (``logs(namespace, pod)``); the stand-in's own log is ``workdir/logs/kubelet.log``.
* Deletion: a pod that gets a deletionTimestamp has its process group sent
  SIGTERM, then SIGKILL after 5 s (not the pod's terminationGracePeriodSeconds);
  the pod's status is written Failed and the pod is then deleted with
  ``gracePeriodSeconds: 0`` (uid precondition), as the kubelet confirms a graceful
  deletion - so Job deletion and garbage collection really stop the work. A pod
  that disappears outright (forced deletion) is just killed.
* ``max_parallel`` processes at most; later pods stay Pending until a slot frees.
* Pods bound to the node in phase Running that this instance does not know (a
  previous FakeKubelet stopped while they ran) are written Failed (exit 137).

What it does not imitate: images and filesystems (the process runs in this
machine's environment, as this user, with this Python), resource requests and
limits (no cgroups, no OOM kills, no GPU isolation), probes, lifecycle hooks,
init/sidecar/ephemeral containers and every container but the first, restarts
(restartPolicy is ignored: a pod runs once), the pod network, service-account
token mounts and in-cluster config (no ``KUBERNETES_SERVICE_*`` variables), volume
contents (Secret/ConfigMap/projected volumes are empty folders), ``kubectl logs``
/ ``exec`` (read ``logs()`` instead), node heartbeats/leases and pod events. On
``stop()`` every process is killed without writing statuses (as when a node dies).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

NODE_NAME = "fake-node"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # bytes of termination message kept per container (Kubernetes)
FALLBACK_LINES = 80  # FallbackToLogsOnError: last 80 lines ...
FALLBACK_BYTES = 2048  # ... or 2048 bytes, whichever is smaller (Kubernetes)
KILL_GRACE_S = 5.0
CONFIG_RETRY_S = 2.0
WATCH_TIMEOUT_S = 60  # server-side: the apiserver ends each watch after this
READ_TIMEOUT_S = 90.0  # client-side safety net on a silent stream

_live: list[FakeKubelet] = []


class ClusterLike(Protocol):
    server: str
    token: str
    ca_file: Path


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


class _ConfigError(Exception):
    """The container cannot be configured yet (missing Secret/ConfigMap/key)."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class _Api:
    """A tiny JSON client of the apiserver: one HTTPS connection per call."""

    def __init__(self, cluster: ClusterLike) -> None:
        parts = urllib.parse.urlsplit(cluster.server)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.token = cluster.token
        self.context = ssl.create_default_context(cafile=str(cluster.ca_file))

    def connect(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if content_type:
            out["Content-Type"] = content_type
        return out

    def call(
        self,
        method: str,
        path: str,
        body: object | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        conn = self.connect(timeout)
        try:
            conn.request(method, path, body=data, headers=self.headers(content_type if data is not None else None))
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, method, path, payload.decode(errors="replace"))
        result: dict[str, Any] = json.loads(payload) if payload else {}
        return result

    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.call(
            "PATCH",
            f"/api/v1/namespaces/{_q(ns)}/pods/{_q(name)}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )


# ------------------------------------------------------------ pure helpers


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, unknown ones
    stay as written, ``$$`` is an escaped ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _path_rewriter(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """Replace each container path (a whole path or a prefix of one, delimited by
    the string's start/end, whitespace, ``=``, ``:``, ``,`` or quotes) with its
    local counterpart, longest first, in one pass."""
    paths = sorted((p for p in mapping if p and p != "/"), key=len, reverse=True)
    if not paths:
        return lambda s: s
    pattern = re.compile(
        r"(?<![^\s=:,\"'])(" + "|".join(re.escape(p.rstrip("/")) for p in paths) + r")(?=$|[/\s:,\"'])"
    )
    stripped = {p.rstrip("/"): v for p, v in mapping.items()}
    return lambda s: pattern.sub(lambda m: stripped[m.group(1)], s)


def _log_tail(path: Path, lines: int = FALLBACK_LINES, limit: int = FALLBACK_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    tail = b"\n".join(data.splitlines()[-lines:])
    return tail[-limit:].decode(errors="replace")


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _meminfo_ki() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 8 * 1024 * 1024


def _die_with_thread() -> Callable[[], None] | None:
    """preexec_fn: SIGKILL the child when the forking thread (its waiter) dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


# ------------------------------------------------------------------ pods


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    pod: dict[str, Any]
    delete_requested: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)  # the API object is gone
    proc: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    start_time: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class _Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path
    error: str | None = None  # StartError message (the process cannot start)


class FakeKubelet:
    """See the module docstring. ``start()`` returns ``self``; ``stop()`` is idempotent."""

    def __init__(
        self,
        cluster: ClusterLike,
        extra_env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        max_parallel: int = 2,
        node_name: str = NODE_NAME,
    ) -> None:
        if workdir is None:
            raise ValueError("FakeKubelet needs a workdir")
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.cluster = cluster
        self.extra_env = dict(extra_env or {})
        self.workdir = Path(workdir).resolve()
        self.max_parallel = max_parallel
        self.node_name = node_name
        self.api = _Api(cluster)
        self._slots = threading.BoundedSemaphore(max_parallel)
        self._pods: dict[str, _Pod] = {}  # uid -> pods with a worker thread
        self._done: set[str] = set()  # uids whose worker finished
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._watch_conn: http.client.HTTPSConnection | None = None
        self._log_lock = threading.Lock()
        self._preexec = _die_with_thread()
        self.log_dir = self.workdir / "logs"
        self.pods_dir = self.workdir / "pods"

    # ------------------------------------------------------------ public

    def start(self) -> FakeKubelet:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        ready = threading.Event()
        self._watch_thread = threading.Thread(
            target=self._watch_loop, args=(ready,), name="fake-kubelet-watch", daemon=True
        )
        self._watch_thread.start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError(f"fake kubelet: could not list pods; see {self.log_dir / 'kubelet.log'}")
        _live.append(self)
        return self

    def stop(self) -> None:
        """Kill every process (SIGTERM, SIGKILL after 5 s) and stop watching; no status is written."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        conn = self._watch_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            pod.delete_requested.set()
        for pod in pods:
            if pod.thread is not None:
                pod.thread.join(KILL_GRACE_S + 5)
            self._kill(pod)  # in case the thread did not get to it
        if self._watch_thread is not None:
            self._watch_thread.join(10)
        with contextlib.suppress(Exception):
            self._set_node_ready(False)
        if self in _live:
            _live.remove(self)
        self._log("stopped")

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_path(self, namespace: str, pod: str) -> Path:
        return self.log_dir / f"{namespace}_{pod}.log"

    def logs(self, namespace: str, pod: str) -> str:
        """The pod's combined stdout/stderr so far ("" if it never ran)."""
        try:
            return self.log_path(namespace, pod).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pid(self, namespace: str, pod: str) -> int | None:
        """The local process id of the pod's container while it runs, else None."""
        with self._lock:
            for p in self._pods.values():
                if p.namespace == namespace and p.name == pod and p.proc is not None and p.proc.poll() is None:
                    return p.proc.pid
        return None

    def kubelet_log(self) -> str:
        try:
            return (self.log_dir / "kubelet.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ node

    def _node_status(self, ready: bool) -> dict[str, Any]:
        now = _now()
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{_meminfo_ki()}Ki",
            "pods": "110",
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": "1",
        }
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletStopped",
                    "message": "fake kubelet (kompress tests) is posting ready status"
                    if ready
                    else "fake kubelet stopped",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "fake kubelet (local processes)",
                "containerRuntimeVersion": "fake://0",
                "kubeletVersion": "v0.0.0-fake",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {},
            "status": self._node_status(True),
        }
        try:
            self.api.call("POST", "/api/v1/nodes", node)
        except ApiError as err:
            if err.status != 409:
                raise
        self._set_node_ready(True)
        self._log(f"registered node {self.node_name}")

    def _set_node_ready(self, ready: bool) -> None:
        self.api.call(
            "PATCH",
            f"/api/v1/nodes/{_q(self.node_name)}/status",
            {"status": self._node_status(ready)},
            content_type="application/merge-patch+json",
            timeout=5.0 if not ready else 30.0,
        )

    # ------------------------------------------------------------ watch

    def _watch_loop(self, ready: threading.Event) -> None:
        rv: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if rv is None:
                    listing = self.api.call("GET", "/api/v1/pods")
                    rv = str(listing["metadata"]["resourceVersion"])
                    present = set()
                    for item in listing.get("items") or []:
                        present.add(item["metadata"]["uid"])
                        self._observe("LIST", item)
                    self._forget_missing(present)
                    ready.set()
                    self._log(f"listed pods at resourceVersion {rv}")
                rv = self._watch(rv)
                failures = 0
            except Exception as exc:
                if self._stopping.is_set():
                    break
                failures += 1
                self._log(f"watch error ({failures}): {exc!r}; retrying")
                if failures > 3:
                    rv = None  # relist: something is off with our position
                self._stopping.wait(min(5.0, 0.5 * failures))

    def _watch(self, rv: str) -> str | None:
        """Follow one watch stream; return the last resourceVersion seen, or None to relist."""
        query = urllib.parse.urlencode(
            {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": WATCH_TIMEOUT_S}
        )
        conn = self.api.connect(READ_TIMEOUT_S)
        self._watch_conn = conn
        try:
            conn.request("GET", f"/api/v1/pods?{query}", headers=self.api.headers())
            resp = conn.getresponse()
            if resp.status == 410:
                self._log("watch: 410 Gone; relisting")
                return None
            if resp.status != 200:
                raise ApiError(resp.status, "GET", "/api/v1/pods?watch=1", resp.read().decode(errors="replace"))
            while not self._stopping.is_set():
                line = resp.readline()
                if not line:
                    return rv  # the server ended the watch (timeoutSeconds): resume
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    self._log(f"watch ERROR event: {obj.get('code')} {obj.get('message')}; relisting")
                    return None  # 410 Gone (expired resourceVersion) or worse: relist
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = str(new_rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    try:
                        self._observe(kind, obj)
                    except Exception:
                        self._log(f"handling {kind} failed:\n{traceback.format_exc()}")
            return rv
        finally:
            self._watch_conn = None
            conn.close()

    def _forget_missing(self, present: set[str]) -> None:
        """After a relist: pods we run that no longer exist were deleted meanwhile."""
        with self._lock:
            missing = [p for uid, p in self._pods.items() if uid not in present]
        for pod in missing:
            self._log(f"{pod.key}: gone while not watching")
            pod.gone.set()
            pod.delete_requested.set()

    def _observe(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        uid, ns, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if not uid or not ns or not name:
            return
        with self._lock:
            known = self._pods.get(uid)
            if known is None and uid in self._done:
                return  # ran here and finished: later events (even stale ones) change nothing
        if kind == "DELETED":
            if known is not None:
                self._log(f"{known.key}: deleted")
                known.gone.set()
                known.delete_requested.set()
            return
        deleting = bool(meta.get("deletionTimestamp"))
        if known is not None:
            if deleting and not known.delete_requested.is_set():
                self._log(f"{known.key}: deletion requested")
                known.delete_requested.set()
            return
        phase = status.get("phase") or "Pending"
        node = spec.get("nodeName")
        if not node:
            if deleting or phase != "Pending" or spec.get("schedulerName", "default-scheduler") != "default-scheduler":
                return
            if not self._bind(ns, name, uid):
                return
            obj = {**obj, "spec": {**spec, "nodeName": self.node_name}}
        elif node != self.node_name:
            return
        if phase in ("Succeeded", "Failed"):
            return
        if deleting:
            self._finish_deletion(ns, name, uid)
            return
        if phase == "Running":
            self._fail_orphan(ns, name, obj)
            return
        pod = _Pod(uid=uid, namespace=ns, name=name, pod=obj)
        pod.thread = threading.Thread(target=self._run_pod, args=(pod,), name=f"fake-kubelet {pod.key}", daemon=True)
        with self._lock:
            self._pods[uid] = pod
        pod.thread.start()

    def _bind(self, ns: str, name: str, uid: str) -> bool:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.api.call("POST", f"/api/v1/namespaces/{_q(ns)}/pods/{_q(name)}/binding", binding)
        except ApiError as err:
            self._log(f"{ns}/{name}: binding failed: {err}")
            return False
        self._log(f"{ns}/{name}: bound to {self.node_name}")
        return True

    def _fail_orphan(self, ns: str, name: str, obj: dict[str, Any]) -> None:
        container = (obj.get("spec") or {}).get("containers", [{}])[0]
        now = _now()
        started = (obj.get("status") or {}).get("startTime") or now
        with contextlib.suppress(ApiError):
            self.api.patch_status(
                ns,
                name,
                self._terminal_status(
                    container, started, started, now, 137, "container lost: its fake kubelet stopped"
                ),
            )
        self._log(f"{ns}/{name}: Running but unknown here: written Failed")

    def _finish_deletion(self, ns: str, name: str, uid: str) -> None:
        """Confirm a graceful deletion: delete with grace period 0 (uid precondition)."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            self.api.call("DELETE", f"/api/v1/namespaces/{_q(ns)}/pods/{_q(name)}", body)
            self._log(f"{ns}/{name}: deleted (grace period 0)")
        except ApiError as err:
            if err.status not in (404, 409):
                self._log(f"{ns}/{name}: final delete failed: {err}")

    # ------------------------------------------------------------ one pod

    def _run_pod(self, pod: _Pod) -> None:
        try:
            self._run_pod_inner(pod)
        except Exception:
            self._log(f"{pod.key}: worker crashed:\n{traceback.format_exc()}")
            self._kill(pod)
        finally:
            with self._lock:
                self._pods.pop(pod.uid, None)
                self._done.add(pod.uid)

    def _api_ok(self, pod: _Pod) -> bool:
        return not self._stopping.is_set() and not pod.gone.is_set()

    def _patch(self, pod: _Pod, status: dict[str, Any]) -> None:
        if not self._api_ok(pod):
            return
        try:
            self.api.patch_status(pod.namespace, pod.name, status)
        except ApiError as err:
            if err.status == 404:
                pod.gone.set()
            else:
                self._log(f"{pod.key}: status write failed: {err}")
        except OSError as err:
            self._log(f"{pod.key}: status write failed: {err!r}")

    def _run_pod_inner(self, pod: _Pod) -> None:
        container: dict[str, Any] = ((pod.pod.get("spec") or {}).get("containers") or [{}])[0]
        pod.start_time = (pod.pod.get("status") or {}).get("startTime") or _now()

        # 1. configuration (retried while a Secret/ConfigMap is missing), Pending meanwhile
        prepared: _Prepared | None = None
        last_error = None
        while prepared is None:
            if pod.delete_requested.is_set() or self._stopping.is_set():
                break
            try:
                prepared = self._prepare(pod, container)
            except _ConfigError as err:
                if str(err) != last_error:
                    last_error = str(err)
                    self._log(f"{pod.key}: CreateContainerConfigError: {err}")
                    self._patch(pod, self._pending_status(pod, container, "CreateContainerConfigError", str(err)))
                pod.delete_requested.wait(CONFIG_RETRY_S)
        if prepared is not None and last_error is None:
            self._patch(pod, self._pending_status(pod, container, "ContainerCreating", None))

        # 2. a slot
        have_slot = False
        while prepared is not None and not pod.delete_requested.is_set() and not self._stopping.is_set():
            if self._slots.acquire(timeout=0.5):
                have_slot = True
                break
        try:
            if not have_slot:
                self._after_deletion(pod)
                return
            assert prepared is not None
            self._execute(pod, container, prepared)
        finally:
            if have_slot:
                self._slots.release()
        if pod.delete_requested.is_set():
            self._after_deletion(pod)

    def _after_deletion(self, pod: _Pod) -> None:
        if self._api_ok(pod) and pod.delete_requested.is_set():
            self._finish_deletion(pod.namespace, pod.name, pod.uid)

    def _execute(self, pod: _Pod, container: dict[str, Any], prepared: _Prepared) -> None:
        log_path = self.log_path(pod.namespace, pod.name)
        started = _now()
        if prepared.error is not None:
            with log_path.open("ab") as log:
                log.write(f"fake kubelet: {prepared.error}\n".encode())
            self._log(f"{pod.key}: StartError: {prepared.error}")
            self._patch(
                pod,
                self._terminal_status(
                    container, pod.start_time or started, started, _now(), 128, prepared.error, "StartError"
                ),
            )
            return
        with log_path.open("wb") as log:
            try:
                proc = subprocess.Popen(
                    prepared.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=prepared.cwd,
                    env=prepared.env,
                    start_new_session=True,  # one process group to kill, like a container
                    preexec_fn=self._preexec,
                )
            except OSError as err:
                msg = f"failed to start {prepared.argv[0]}: {err}"
                log.write(f"fake kubelet: {msg}\n".encode())
                self._patch(
                    pod,
                    self._terminal_status(
                        container, pod.start_time or started, started, _now(), 128, msg, "StartError"
                    ),
                )
                return
        pod.proc = proc
        self._log(f"{pod.key}: started pid {proc.pid}: {prepared.argv}")
        self._patch(pod, self._running_status(pod, container, started, proc.pid))

        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if pod.delete_requested.is_set() or self._stopping.is_set():
                    self._log(f"{pod.key}: killing pid {proc.pid}")
                    self._kill(pod)
                    break
        code = _exit_code(proc.returncode)
        finished = _now()
        message = self._termination_message(container, prepared.termination_file, log_path, code)
        self._log(f"{pod.key}: pid {proc.pid} exited with {code}")
        self._patch(pod, self._terminal_status(container, pod.start_time or started, started, finished, code, message))

    def _kill(self, pod: _Pod) -> None:
        proc = pod.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Whatever else is left in its group (it exited on SIGTERM, children may not have).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------ container config

    def _get(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, Any] | None:
        try:
            return self.api.call("GET", f"/api/v1/namespaces/{_q(ns)}/{kind}s/{_q(name)}")
        except ApiError as err:
            if err.status == 404:
                if optional:
                    return None
                raise _ConfigError(f'{kind} "{name}" not found') from None
            raise

    @staticmethod
    def _values(kind: str, obj: dict[str, Any]) -> dict[str, str]:
        if kind == "secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        out = dict(obj.get("data") or {})
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v).decode(errors="replace")
        return out

    def _container_env(self, pod: _Pod, container: dict[str, Any]) -> dict[str, str]:
        ns = pod.namespace
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
                ref = source.get(key)
                if ref:
                    obj = self._get(kind, ns, ref["name"], bool(ref.get("optional")))
                    if obj is not None:
                        for k, v in self._values(kind, obj).items():
                            env[prefix + k] = v
        meta, spec = pod.pod.get("metadata") or {}, pod.pod.get("spec") or {}
        fields = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        }
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = _expand(var.get("value") or "", env)
                continue
            source = var["valueFrom"]
            value: str | None
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                kind, ref = (
                    ("secret", source["secretKeyRef"])
                    if "secretKeyRef" in source
                    else (
                        "configmap",
                        source["configMapKeyRef"],
                    )
                )
                optional = bool(ref.get("optional"))
                obj = self._get(kind, ns, ref["name"], optional)
                values = self._values(kind, obj) if obj is not None else {}
                if ref["key"] not in values:
                    if optional:
                        continue
                    label = "Secret" if kind == "secret" else "ConfigMap"
                    raise _ConfigError(f"couldn't find key {ref['key']} in {label} {ns}/{ref['name']}")
                value = values[ref["key"]]
            elif "fieldRef" in source:
                path = source["fieldRef"].get("fieldPath", "")
                value = fields.get(path)
                if value is None:
                    raise _ConfigError(f"env {name}: fieldRef {path!r} is not imitated by the fake kubelet")
            else:
                raise _ConfigError(f"env {name}: {sorted(source)} is not imitated by the fake kubelet")
            env[name] = value
        return env

    def _prepare(self, pod: _Pod, container: dict[str, Any]) -> _Prepared:
        root = self.pods_dir / f"{pod.namespace}_{pod.name}_{pod.uid[:8]}"
        volumes = root / "volumes"
        volumes.mkdir(parents=True, exist_ok=True)
        mapping: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            local = volumes / mount["name"]
            if mount.get("subPath"):
                local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            mapping[mount["mountPath"]] = str(local)
        term_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        term_file = root / "termination-log"
        term_file.write_bytes(b"")
        mapping[term_path] = str(term_file)
        rewrite = _path_rewriter(mapping)

        declared = self._container_env(pod, container)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "KUBECONFIG"}
        env.update(self.extra_env)
        env["HOSTNAME"] = pod.name
        env.update({k: rewrite(v) for k, v in declared.items()})

        argv = [rewrite(_expand(a, declared)) for a in (container.get("command") or [])]
        args = [rewrite(_expand(a, declared)) for a in (container.get("args") or [])]
        cwd = root
        if container.get("workingDir"):
            wd = Path(rewrite(container["workingDir"]))
            if wd.is_dir():
                cwd = wd
        error = None
        if not argv:
            error = "no command: the fake kubelet cannot run an image's entrypoint"
        elif argv[0] == "kompress":
            argv = [sys.executable, "-m", "kompress.jobs.cli", *argv[1:]]
        else:
            exe = shutil.which(argv[0], path=env.get("PATH"))
            if exe is None:
                error = f'exec: "{argv[0]}": executable file not found in $PATH'
            else:
                argv[0] = exe
        return _Prepared(argv=argv + args, env=env, cwd=cwd, termination_file=term_file, error=error)

    # ------------------------------------------------------------ statuses

    @staticmethod
    def _termination_message(container: dict[str, Any], term_file: Path, log_path: Path, code: int) -> str:
        try:
            raw = term_file.read_bytes()[:MESSAGE_LIMIT]
        except OSError:
            raw = b""
        message = raw.decode(errors="replace")
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = _log_tail(log_path)
        return message

    def _container_base(self, container: dict[str, Any], pid: int | None) -> dict[str, Any]:
        base: dict[str, Any] = {
            "name": container.get("name") or "main",
            "image": container.get("image") or "",
            "imageID": "",
            "restartCount": 0,
        }
        if pid is not None:
            base["containerID"] = f"fake://{self.node_name}/{pid}"
        return base

    @staticmethod
    def _conditions(now: str, ready: bool, initialized: bool = True, reason: str | None = None) -> list[dict[str, Any]]:
        def cond(kind: str, ok: bool) -> dict[str, Any]:
            out = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
            if not ok and reason:
                out["reason"] = reason
            return out

        return [
            cond("PodReadyToStartContainers", initialized and reason != "PodCompleted"),
            cond("Initialized", initialized),
            cond("Ready", ready),
            cond("ContainersReady", ready),
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]

    def _pending_status(self, pod: _Pod, container: dict[str, Any], reason: str, message: str | None) -> dict[str, Any]:
        waiting: dict[str, Any] = {"reason": reason}
        if message:
            waiting["message"] = message
        return {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "startTime": pod.start_time,
            "conditions": self._conditions(_now(), False, reason="ContainersNotReady"),
            "containerStatuses": [
                {
                    **self._container_base(container, None),
                    "ready": False,
                    "started": False,
                    "state": {"waiting": waiting},
                }
            ],
        }

    def _running_status(self, pod: _Pod, container: dict[str, Any], started: str, pid: int) -> dict[str, Any]:
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "startTime": pod.start_time,
            "conditions": self._conditions(started, True),
            "containerStatuses": [
                {
                    **self._container_base(container, pid),
                    "ready": True,
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                }
            ],
        }

    def _terminal_status(
        self,
        container: dict[str, Any],
        start_time: str,
        started: str,
        finished: str,
        code: int,
        message: str,
        reason: str | None = None,
    ) -> dict[str, Any]:
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": started,
            "finishedAt": finished,
        }
        if message:
            terminated["message"] = message
        return {
            "phase": "Succeeded" if code == 0 else "Failed",
            "hostIP": "127.0.0.1",
            "startTime": start_time,
            "conditions": self._conditions(finished, False, reason="PodCompleted"),
            "containerStatuses": [
                {
                    **self._container_base(container, None),
                    "ready": False,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        }

    # ------------------------------------------------------------ own log

    def _log(self, message: str) -> None:
        line = f"{datetime.datetime.now().isoformat(timespec='milliseconds')} {message}\n"
        with self._log_lock, contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / "kubelet.log").open("a") as fh:
                fh.write(line)


def _stop_all() -> None:
    for kubelet in list(_live):
        with contextlib.suppress(Exception):
            kubelet.stop()


atexit.register(_stop_all)
