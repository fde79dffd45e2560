"""Start a throwaway etcd + kube-apiserver + kube-controller-manager on loopback.

The binaries come from ``.ci/build-kube.sh`` (``$KOMPRESS_CACHE/bin``, default
``~/.cache/kompress/bin``). There is no kubelet and no scheduler: pods stay
Pending until a test writes their status through the ``pods/status``
subresource (see ``kubelet.py``, the stand-in kubelet).

Usage::

    cluster = start_cluster(Path(tmpdir))
    try:
        subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "ns"])
    finally:
        cluster.stop()

Every process is also killed at interpreter exit (``atexit``) and, on Linux,
when the Python process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# First address of the service range: the in-cluster "kubernetes" Service.
KUBERNETES_SERVICE_IP = "10.0.0.1"
CONTROLLERS = "job,garbagecollector,namespace"
# What a cluster with a real node needs on top (tests/kube/node.py): workloads, ServiceAccounts and their
# tokens, the kube-root-ca.crt ConfigMap every projected token volume mounts, Service endpoints, pod GC.
NODE_CONTROLLERS = (
    "job,garbagecollector,namespace,deployment,replicaset,statefulset,daemonset,cronjob,"
    "serviceaccount,serviceaccount-token,root-ca-cert-publisher,endpoint,endpointslice,"
    "endpointslicemirroring,ttl-after-finished,podgc,disruption,resourcequota,"
    # Lifts the node.kubernetes.io/not-ready taint the kubelet registers with.
    "nodelifecycle"
)

_live: list[Cluster] = []


def default_bin_dir() -> Path:
    """Where ``.ci/build-kube.sh`` puts kube-apiserver, kube-controller-manager and etcd."""
    override = os.environ.get("KOMPRESS_KUBE_BIN")
    if override:
        return Path(override)
    cache = os.environ.get("KOMPRESS_CACHE") or str(Path.home() / ".cache" / "kompress")
    return Path(cache) / "bin"


class ClusterError(RuntimeError):
    """A component failed to start or become ready."""


@dataclass
class _Component:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


def stop_component(comp: _Component, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it outlives ``timeout`` seconds."""
    if comp.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            comp.proc.terminate()
    try:
        comp.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            comp.proc.kill()
        comp.proc.wait()


@dataclass
class Cluster:
    """A running control plane. ``stop()`` is idempotent."""

    kubeconfig: Path
    server: str
    token: str
    ca_file: Path
    workdir: Path
    etcd_url: str
    _components: list[_Component] = field(default_factory=list, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the apiserver's serving certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Call the API as the admin user; returns the decoded JSON response.

        Raises ``urllib.error.HTTPError`` on a non-2xx answer.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
            payload = resp.read()
        result: dict[str, Any] = json.loads(payload) if payload else {}
        return result

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` of every component's log, for failure messages."""
        return "\n".join(f"--- {c.name} ({c.log_path}) ---\n{c.log_tail(lines)}" for c in self._components)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the components newest first (so the apiserver shuts down while
        etcd is still there); SIGKILL any that outlives ``timeout`` seconds."""
        for comp in reversed(self._components):
            stop_component(comp, timeout)
        self._components.clear()
        if self in _live:
            _live.remove(self)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_all() -> None:
    for cluster in list(_live):
        cluster.stop(timeout=5.0)


atexit.register(_stop_all)


# --------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGKILL when this process dies (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    used from the main thread; elsewhere ``atexit`` and ``stop()`` must do.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _find_binary(bin_dir: Path, name: str) -> Path:
    path = bin_dir / name
    if path.exists() and os.access(path, os.X_OK):
        return path
    if name == "etcd":
        found = shutil.which("etcd")
        if found:
            return Path(found)
    raise ClusterError(f"{path} not found: run .ci/build-kube.sh first (or set KOMPRESS_KUBE_BIN)")


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


# ------------------------------------------------------------- key material


@dataclass
class _Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def _generate_pki(pki_dir: Path, alt_ips: Sequence[str], alt_dns: Sequence[str]) -> _Pki:
    """CA + apiserver serving cert + service-account RSA key pair.

    Uses the ``cryptography`` package when importable, else the ``openssl`` CLI.
    """
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki = _Pki(
        ca_cert=pki_dir / "ca.crt",
        serving_cert=pki_dir / "apiserver.crt",
        serving_key=pki_dir / "apiserver.key",
        sa_key=pki_dir / "sa.key",
        sa_pub=pki_dir / "sa.pub",
    )
    # KOMPRESS_KUBE_PKI=openssl forces the CLI path (to test it).
    if os.environ.get("KOMPRESS_KUBE_PKI") != "openssl" and importlib.util.find_spec("cryptography") is not None:
        _generate_pki_cryptography(pki, alt_ips, alt_dns)
        return pki
    _generate_pki_openssl(pki, pki_dir, alt_ips, alt_dns)
    return pki


def _generate_pki_cryptography(pki: _Pki, alt_ips: Sequence[str], alt_dns: Sequence[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kompress-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    srv_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in alt_dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in alt_ips]
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    no_enc = serialization.NoEncryption()
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    pki.serving_cert.write_bytes(srv_cert.public_bytes(pem))
    _write_private(pki.serving_key, srv_key.private_bytes(pem, pkcs8, no_enc))
    _write_private(pki.sa_key, sa_key.private_bytes(pem, pkcs8, no_enc))
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ClusterError("neither the 'cryptography' package nor the openssl CLI is available")
    res = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{res.stderr}")


def _generate_pki_openssl(pki: _Pki, pki_dir: Path, alt_ips: Sequence[str], alt_dns: Sequence[str]) -> None:
    ca_key = pki_dir / "ca.key"
    csr = pki_dir / "apiserver.csr"
    ext = pki_dir / "apiserver.ext"
    sans = [f"DNS:{d}" for d in alt_dns] + [f"IP:{ip}" for ip in alt_ips]
    ext.write_text(
        f"basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(pki.ca_cert),
        "-days", "7", "-subj", "/CN=kompress-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", str(pki.serving_key), "-out", str(csr),
        "-subj", "/CN=kube-apiserver",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(pki.serving_cert), "-days", "7", "-sha256",
        "-extfile", str(ext),
    )  # fmt: skip
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(pki.sa_key))  # fmt: skip
    _openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    for key in (ca_key, pki.serving_key, pki.sa_key):
        key.chmod(0o600)


# ------------------------------------------------------------------- config


def _write_kubeconfig(path: Path, server: str, ca_cert: Path, user: str, token: str) -> None:
    """kubectl / client-go config; JSON is valid YAML, so no YAML library needed."""
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kompress",
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kompress", "context": {"cluster": "kompress", "user": user}}],
        "current-context": "kompress",
        "preferences": {},
    }
    _write_private(path, json.dumps(config, indent=2).encode())


def _start(name: str, argv: list[str], log_dir: Path, cwd: Path, components: list[_Component]) -> _Component:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            preexec_fn=_die_with_parent(),  # children must not outlive us
        )
    comp = _Component(name, proc, log_path)
    components.append(comp)
    return comp


def _wait_for(
    comp: _Component,
    url: str,
    timeout: float,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> None:
    """Poll ``url`` until it answers 200 ``ok``; fail early if ``comp`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        code = comp.proc.poll()
        if code is not None:
            raise ClusterError(
                f"{comp.name} exited with status {code} before {url} was ready; "
                f"log tail ({comp.log_path}):\n{comp.log_tail()}"
            )
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=context, timeout=5) as resp:
                body = resp.read().decode(errors="replace")
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {body[:500]}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{comp.name} not ready at {url} after {timeout:g}s (last: {last}); "
                f"log tail ({comp.log_path}):\n{comp.log_tail()}"
            )
        time.sleep(0.25)


# --------------------------------------------------------------------- start


def start_cluster(
    workdir: Path,
    bin_dir: Path | None = None,
    timeout: float = 120.0,
    extra_apiserver_args: Sequence[str] = (),
    extra_controller_manager_args: Sequence[str] = (),
    bind_address: str = "127.0.0.1",
    controllers: str = CONTROLLERS,
    service_account_admission: bool = False,
) -> Cluster:
    """Start etcd, kube-apiserver and kube-controller-manager under ``workdir``.

    ``workdir`` gets ``etcd/`` (wiped first), ``pki/``, ``logs/``, the token
    file and the kubeconfigs; ``cluster.kubeconfig`` is the admin's (group
    system:masters). Ports are free ones on 127.0.0.1.

    For a cluster with a real node (``node.py``): ``bind_address`` is where
    the apiserver listens and what it advertises; any address but loopback
    also turns on the endpoint reconciler, so the ``kubernetes`` Service gets
    an endpoint pods can reach. ``service_account_admission`` lets pods get
    their ServiceAccount token volume; ``controllers`` is the
    controller-manager's list (``NODE_CONTROLLERS`` for a node).

    Returns once the apiserver's ``/readyz`` and the controller-manager's
    ``/healthz`` answer ok. On failure everything started so far is stopped and
    ``ClusterError`` carries the failing component's log tail.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bins = Path(bin_dir) if bin_dir is not None else default_bin_dir()
    etcd_bin = _find_binary(bins, "etcd")
    apiserver_bin = _find_binary(bins, "kube-apiserver")
    kcm_bin = _find_binary(bins, "kube-controller-manager")

    log_dir = workdir / "logs"
    log_dir.mkdir(exist_ok=True)
    etcd_data = workdir / "etcd"
    # A throwaway cluster: stale data would carry the old member's peer URL.
    shutil.rmtree(etcd_data, ignore_errors=True)
    etcd_data.mkdir(mode=0o700)

    etcd_port, peer_port, api_port, kcm_port = free_ports(4)
    loopback = ipaddress.ip_address(bind_address).is_loopback
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    server = f"https://{bind_address}:{api_port}"

    pki = _generate_pki(
        workdir / "pki",
        alt_ips=sorted({"127.0.0.1", bind_address, KUBERNETES_SERVICE_IP}),
        alt_dns=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    admin_token = secrets.token_hex(16)
    kcm_token = secrets.token_hex(16)
    token_file = workdir / "tokens.csv"
    # token,user,uid,"groups": kube-controller-manager also gets system:masters,
    # since without --use-service-account-credentials its own identity runs
    # every controller.
    _write_private(
        token_file,
        (
            f'{admin_token},admin,admin,"system:masters"\n'
            f'{kcm_token},system:kube-controller-manager,kcm,"system:masters"\n'
        ).encode(),
    )
    kubeconfig = workdir / "kubeconfig"
    kcm_kubeconfig = workdir / "kube-controller-manager.kubeconfig"
    _write_kubeconfig(kubeconfig, server, pki.ca_cert, "admin", admin_token)
    _write_kubeconfig(kcm_kubeconfig, server, pki.ca_cert, "system:kube-controller-manager", kcm_token)

    components: list[_Component] = []
    cluster = Cluster(
        kubeconfig=kubeconfig,
        server=server,
        token=admin_token,
        ca_file=pki.ca_cert,
        workdir=workdir,
        etcd_url=etcd_url,
        _components=components,
    )
    _live.append(cluster)
    try:
        etcd = _start(
            "etcd",
            [
                str(etcd_bin),
                "--name=kompress",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kompress={peer_url}",
                "--initial-cluster-state=new",
                "--log-level=warn",
            ],
            log_dir,
            workdir,
            components,
        )
        _wait_for(etcd, f"{etcd_url}/health", timeout)

        apiserver = _start(
            "kube-apiserver",
            [
                str(apiserver_bin),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={bind_address}",
                f"--advertise-address={bind_address}",
                # The "kubernetes" Endpoints may not hold a loopback address;
                # without this the reconciler logs an error every 10s.
                f"--endpoint-reconciler-type={'none' if loopback else 'lease'}",
                # logs/exec go to the kubelet by its InternalIP: the node's hostname resolves nowhere here
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--secure-port={api_port}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                *([] if service_account_admission else ["--disable-admission-plugins=ServiceAccount"]),
                f"--service-account-issuer={server}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--token-auth-file={token_file}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                *extra_apiserver_args,
            ],
            log_dir,
            workdir,
            components,
        )
        ctx = cluster.ssl_context()
        _wait_for(apiserver, f"{server}/readyz", timeout, context=ctx, token=admin_token)

        kcm = _start(
            "kube-controller-manager",
            [
                str(kcm_bin),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                f"--controllers={controllers}",
                # For the serviceaccount-token and root-ca-cert-publisher
                # controllers (unused by the default list).
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={workdir / 'kcm-certs'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                *extra_controller_manager_args,
            ],
            log_dir,
            workdir,
            components,
        )
        # Its self-signed serving cert is not worth trusting for a health probe.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        _wait_for(kcm, f"https://127.0.0.1:{kcm_port}/healthz", timeout, context=insecure)
    except BaseException:
        cluster.stop()
        raise
    return cluster
