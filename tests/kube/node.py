"""A real one-node Kubernetes cluster: the control plane of ``cluster.py`` plus kube-scheduler, kube-proxy
(iptables mode), a kubelet and a private containerd (runc, CNI bridge). Pods run for real in containers.

Needs root, ``.ci/build-kube.sh`` (the kube binaries) and ``.ci/install-node.sh`` (containerd, runc, CNI
plugins, iptables, conntrack and the base image archive with the pause sandbox and busybox)::

    node = start_node_cluster(Path(tmpdir), images=[Path("my-image.oci.tar")])
    try:
        node.request("GET", f"/api/v1/nodes/{node.node_name}")
    finally:
        node.stop()

Networking (private addresses only, nothing is reachable from outside the machine):

* ``HOST_IP`` (10.231.0.1/32) on a dummy interface ``kompress0`` (a portless bridge without the dummy
  module): the apiserver and the kubelet bind it; pods reach it through the CNI bridge's gateway, so a
  test's own servers bind it too (``node.host_ip``).
* pods get addresses in ``POD_SUBNET`` (10.232.0.0/24) on bridge ``kompressbr0``; Services stay in
  ``cluster.SERVICE_CLUSTER_IP_RANGE`` and kube-proxy DNATs them.

Only one node cluster runs on a machine at a time (fixed cgroup, bridge and state paths; a lock file says
so). containerd's root (images, snapshots) lives in ``$KOMPRESS_CACHE/containerd`` so imported images stay
cached; an archive is imported only when its images are not there yet. ``stop()`` (also run at exit and,
for a crashed earlier run, before the next start) kills every container and sandbox, unmounts what they
left, removes network namespaces, the bridge, kube-proxy's iptables rules and the kubelet's directories.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kube.cluster import (
    Cluster,
    ClusterError,
    _Component,
    _find_binary,
    _live,
    _start,
    _write_kubeconfig,
    default_bin_dir,
    free_ports,
    start_cluster,
    stop_component,
)

HOST_IFACE = "kompress0"
HOST_IP = "10.231.0.1"
POD_SUBNET = "10.232.0.0/24"
BRIDGE = "kompressbr0"
NODE_NAME = "kompress-node"
CNI_BIN_DIR = "/usr/lib/cni"
# Fixed paths (one node cluster per machine): a start can then clean up what a crashed run left behind.
RUN_DIR = Path("/run/kompress-node")
KUBELET_ROOT = Path("/var/lib/kompress-node/kubelet")
LOCK_FILE = Path("/run/kompress-node.lock")
CONTAINERD_SOCK = RUN_DIR / "containerd.sock"
CONTAINERD_STATE = RUN_DIR / "containerd"
IPAM_DIR = RUN_DIR / "ipam"
CTR_NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace
NODE_COMPONENTS = ("kubelet", "kube-proxy", "kube-scheduler")


def cache_dir() -> Path:
    return Path(os.environ.get("KOMPRESS_CACHE") or str(Path.home() / ".cache" / "kompress"))


def base_image_archive() -> Path:
    """The archive ``.ci/install-node.sh`` builds: pause sandbox + static busybox."""
    return cache_dir() / "node" / "node-base.oci.tar"


def base_image_name() -> str:
    from kube.node_image import BASE_IMAGE

    return BASE_IMAGE


@dataclass
class NodeCluster(Cluster):
    """A running node cluster: everything ``Cluster`` has, plus the node. ``stop()`` is idempotent."""

    host_ip: str = HOST_IP
    node_name: str = NODE_NAME
    pod_subnet: str = POD_SUBNET
    containerd_socket: Path = CONTAINERD_SOCK
    _lock: IO[bytes] | None = field(default=None, repr=False)

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against the private containerd in the CRI namespace; never raises on failure."""
        return _ctr(*args, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        # Node parts first, while containerd still answers; then the control plane.
        for comp in [c for c in self._components if c.name in NODE_COMPONENTS]:
            stop_component(comp, timeout)
            self._components.remove(comp)
        containerd = [c for c in self._components if c.name == "containerd"]
        if containerd and containerd[0].proc.poll() is None:
            _purge_containers()
        for comp in containerd:
            stop_component(comp, timeout)
            self._components.remove(comp)
        _clean_host(containerd_state=True)
        super().stop(timeout)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


# --------------------------------------------------------------------- helpers


def _run(argv: Sequence[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res


def _ctr(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    argv = ["ctr", f"--address={CONTAINERD_SOCK}", f"--namespace={CTR_NAMESPACE}", *args]
    return _run(argv, timeout=timeout, check=False)


def _take_lock() -> IO[bytes]:
    lock = LOCK_FILE.open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        raise ClusterError(f"another node cluster holds {LOCK_FILE}: only one can run on a machine") from exc
    return lock


def _check_host() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the node cluster needs root (containers, network namespaces, iptables)")
    missing = [tool for tool in ("containerd", "ctr", "runc", "iptables", "conntrack", "ip") if not shutil.which(tool)]
    missing += [p for p in (f"{CNI_BIN_DIR}/bridge", f"{CNI_BIN_DIR}/host-local", f"{CNI_BIN_DIR}/loopback")
                if not os.access(p, os.X_OK)]  # fmt: skip
    if missing:
        raise ClusterError(f"node cluster: missing {', '.join(missing)}: run .ci/install-node.sh")


def _ensure_host_interface() -> None:
    """The dummy interface with ``HOST_IP``: a private address pods can reach and the outside cannot."""
    # A kernel without the dummy module (no modprobe here) still has bridges: a bridge without ports
    # holds a local address just as well.
    if (
        _run(["ip", "link", "show", HOST_IFACE], check=False).returncode != 0
        and _run(["ip", "link", "add", HOST_IFACE, "type", "dummy"], check=False).returncode != 0
    ):
        _run(["ip", "link", "add", HOST_IFACE, "type", "bridge"])
    _run(["ip", "addr", "replace", f"{HOST_IP}/32", "dev", HOST_IFACE])
    _run(["ip", "link", "set", HOST_IFACE, "up"])


# -------------------------------------------------------------------- cleanup


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            raw = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as octal.
            points.append(raw.encode().decode("unicode_escape"))
    return points


def _unmount_under(*roots: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    mnt_detach = 2
    prefixes = [str(r).rstrip("/") for r in roots]
    inside = [m for m in _mount_points() if any(m == p or m.startswith(p + "/") for p in prefixes)]
    # Deepest first, so a parent is never busy because of a child mount.
    for point in sorted(set(inside), key=len, reverse=True):
        libc.umount2(point.encode(), mnt_detach)


def _purge_containers() -> None:
    """Kill and delete every task and container in the CRI namespace (pods of this or a crashed run)."""
    tasks = _ctr("tasks", "ls", "-q").stdout.split()
    for task in tasks:
        _ctr("tasks", "kill", "--signal=SIGKILL", task)
    for task in tasks:
        _ctr("tasks", "rm", "--force", task)
    for container in _ctr("containers", "ls", "-q").stdout.split():
        _ctr("containers", "rm", container)


def _remove_cgroups() -> None:
    """The kubelet's ``kubepods`` cgroups (cgroupfs driver), leaves first; busy ones stay."""
    root = Path("/sys/fs/cgroup")
    for top in root.glob("*/kubepods*"):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda e: len(e[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _remove_kube_chains() -> None:
    """The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...), which ``kube-proxy --cleanup``
    leaves: jumps into them from the built-in chains go first, then the chains. One node per machine, so
    every KUBE-* chain here is ours."""
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            rules = _run([tool, "-w", "-t", table, "-S"], check=False).stdout.splitlines()
            chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
            for rule in rules:
                args = shlex.split(rule)
                if args[:1] == ["-A"] and not args[1].startswith("KUBE-") and any(a.startswith("KUBE-") for a in args):
                    _run([tool, "-w", "-t", table, "-D", *args[1:]], check=False)
            for chain in chains:
                _run([tool, "-w", "-t", table, "-F", chain], check=False)
            for chain in chains:
                _run([tool, "-w", "-t", table, "-X", chain], check=False)


def _clean_host(containerd_state: bool) -> None:
    """Undo what a node run leaves on the host: mounts, netns, bridge, iptables rules, kubelet dirs.

    ``containerd_state`` only once containerd is down: a running one (or the next one, which reconnects to
    the shims of a crashed run so they can be purged) needs it.
    """
    _unmount_under(KUBELET_ROOT)
    if containerd_state:
        _unmount_under(CONTAINERD_STATE)
        shutil.rmtree(CONTAINERD_STATE, ignore_errors=True)
    netns_dir = Path("/run/netns")
    for ns in netns_dir.glob("cni-*"):  # the CRI plugin's names for pod network namespaces
        _unmount_under(ns)
        with contextlib.suppress(OSError):
            ns.unlink()
    shutil.rmtree(KUBELET_ROOT, ignore_errors=True)
    shutil.rmtree(IPAM_DIR, ignore_errors=True)
    _run(["ip", "link", "del", BRIDGE], check=False)
    proxy = default_bin_dir() / "kube-proxy"
    if proxy.exists():
        # Removes every KUBE-* chain and rule kube-proxy added (iptables and nftables).
        _run([str(proxy), "--cleanup"], check=False)
    _remove_kube_chains()
    _remove_cgroups()


# ------------------------------------------------------------------ containerd


def _containerd_config(workdir: Path, sandbox_image: str) -> Path:
    root = cache_dir() / "containerd"
    conf_dir = workdir / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    cni = {
        "cniVersion": "0.4.0",
        "name": "kompress",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # No masquerading: pods only talk to HOST_IP and each other, never past the host.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(IPAM_DIR),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf_dir / "10-kompress.conflist").write_text(json.dumps(cni, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{root / "root"}"
state = "{CONTAINERD_STATE}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{CONTAINERD_SOCK}"
[ttrpc]
  address = "{RUN_DIR / "containerd.ttrpc.sock"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
[{cri}]
  sandbox_image = "{sandbox_image}"
  # This VM lacks CAP_SYS_RESOURCE: runc fails to lower oom_score_adj below the parent's otherwise.
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"""
    path = workdir / "containerd.toml"
    path.write_text(config)
    return path


def _start_containerd(workdir: Path, log_dir: Path, components: list[_Component], timeout: float) -> None:
    config = _containerd_config(workdir, base_image_name())
    comp = _start("containerd", ["containerd", f"--config={config}"], log_dir, workdir, components)
    deadline = time.monotonic() + timeout
    while True:
        if comp.proc.poll() is not None:
            raise ClusterError(f"containerd exited with status {comp.proc.returncode}:\n{comp.log_tail()}")
        if CONTAINERD_SOCK.exists() and _ctr("version", timeout=10).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"containerd not answering on {CONTAINERD_SOCK} after {timeout:g}s:\n{comp.log_tail()}")
        time.sleep(0.2)


def _normalize_ref(name: str) -> str:
    """Docker-style short names as containerd stores them (``busybox`` -> ``docker.io/library/busybox:latest``)."""
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = "docker.io/" + (name if rest else "library/" + name)
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def _archive_images(archive: Path) -> tuple[set[str], set[str]]:
    """(image names, config digests) an OCI or docker archive holds."""
    names: set[str] = set()
    configs: set[str] = set()
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

        def load(name: str) -> Any:
            handle = tar.extractfile(members[name])
            if handle is None:
                raise ClusterError(f"{archive}: {name} is not a file")
            return json.load(handle)

        if "manifest.json" in members:  # docker save / podman save
            for entry in load("manifest.json"):
                names.update(_normalize_ref(t) for t in entry.get("RepoTags") or [])
                configs.add("sha256:" + Path(entry["Config"]).name.removesuffix(".json"))
        elif "index.json" in members:
            for desc in load("index.json").get("manifests", []):
                notes = desc.get("annotations", {})
                ref = notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name")
                if ref:
                    names.add(_normalize_ref(ref))
                manifest = load("blobs/" + desc["digest"].replace(":", "/"))
                if "config" in manifest:
                    configs.add(manifest["config"]["digest"])
        else:
            raise ClusterError(f"{archive} is neither a docker nor an OCI image archive")
    return names, configs


def _import_images(archives: Sequence[Path]) -> None:
    """Import each archive unless its names and config blobs are already in containerd's cached root."""
    for archive in archives:
        if not archive.is_file():
            raise ClusterError(f"image archive {archive} not found")
        names, configs = _archive_images(archive)
        have_names = set(_ctr("images", "ls", "-q").stdout.split())
        have_blobs = set(_ctr("content", "ls", "-q").stdout.split())
        if names and names <= have_names and configs <= have_blobs:
            continue
        res = _ctr("images", "import", "--snapshotter=overlayfs", str(archive), timeout=600)
        if res.returncode != 0:
            raise ClusterError(f"ctr images import {archive} failed:\n{res.stdout}{res.stderr}")


# ------------------------------------------------------------- kube components


def _kubelet_config(workdir: Path, port: int, healthz_port: int) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": HOST_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        # Private address only; the apiserver (kubectl logs/exec) connects without a client cert.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # this VM has cgroup v1 (hybrid)
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        # Only what keeps the VM alive; a busy test disk must not evict the pods under test.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "volumePluginDir": str(KUBELET_ROOT / "volume-plugins"),
    }
    path = workdir / "kubelet-config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _kube_proxy_config(workdir: Path, kubeconfig: Path, healthz_port: int, metrics_port: int) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME,
        "bindAddress": HOST_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        # NodePorts only on the private address, and no route_localnet sysctl change.
        "nodePortAddresses": [f"{HOST_IP}/32"],
        "iptables": {"syncPeriod": "5s", "minSyncPeriod": "0s", "localhostNodePorts": False},
        # Zero: leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    path = workdir / "kube-proxy-config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _start_node_components(cluster: NodeCluster, log_dir: Path) -> None:
    bins = default_bin_dir()
    workdir = cluster.workdir
    comps = cluster._components
    kubeconfig = workdir / "node.kubeconfig"
    # The node components act as the admin (system:masters): a throwaway cluster needs no per-node identity.
    _write_kubeconfig(kubeconfig, cluster.server, cluster.ca_file, "admin", cluster.token)
    sched_port, proxy_healthz, proxy_metrics, kubelet_port, kubelet_healthz = free_ports(5)
    _start("kube-scheduler", [
        str(_find_binary(bins, "kube-scheduler")), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
        f"--cert-dir={workdir / 'scheduler-certs'}",
    ], log_dir, workdir, comps)  # fmt: skip
    proxy_config = _kube_proxy_config(workdir, kubeconfig, proxy_healthz, proxy_metrics)
    _start("kube-proxy", [str(_find_binary(bins, "kube-proxy")), f"--config={proxy_config}"],
           log_dir, workdir, comps)  # fmt: skip
    KUBELET_ROOT.mkdir(parents=True, exist_ok=True)
    kubelet_config = _kubelet_config(workdir, kubelet_port, kubelet_healthz)
    _start("kubelet", [
        str(_find_binary(bins, "kubelet")), f"--config={kubelet_config}", f"--kubeconfig={kubeconfig}",
        f"--root-dir={KUBELET_ROOT}", f"--hostname-override={NODE_NAME}", f"--node-ip={HOST_IP}",
    ], log_dir, workdir, comps)  # fmt: skip


def _node_ready(cluster: NodeCluster) -> str | None:
    """None when the node can run pods; else what is still missing."""
    try:
        node = cluster.request("GET", f"/api/v1/nodes/{cluster.node_name}", timeout=10)
    except urllib.error.HTTPError as exc:
        return f"node {cluster.node_name}: HTTP {exc.code}"
    ready = [c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"]
    if not ready or ready[0].get("status") != "True":
        return f"node {cluster.node_name} not Ready: {ready[0].get('message') if ready else 'no condition yet'}"
    taints = [t["key"] for t in node.get("spec", {}).get("taints") or []]
    if taints:
        return f"node {cluster.node_name} still tainted {taints}"
    for what, path in (
        ("ServiceAccount default/default", "/api/v1/namespaces/default/serviceaccounts/default"),
        ("ConfigMap default/kube-root-ca.crt", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"),
    ):
        try:
            cluster.request("GET", path, timeout=10)
        except urllib.error.HTTPError as exc:
            return f"{what}: HTTP {exc.code}"
    return None


def _wait_node_ready(cluster: NodeCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing: str | None = "not checked yet"
    while True:
        for comp in cluster._components:
            if comp.proc.poll() is not None:
                raise ClusterError(f"{comp.name} exited with status {comp.proc.returncode}:\n{cluster.logs()}")
        try:
            missing = _node_ready(cluster)
        except (urllib.error.URLError, OSError) as exc:
            missing = f"apiserver: {exc}"
        if missing is None:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"node not ready after {timeout:g}s ({missing}):\n{cluster.logs()}")
        time.sleep(0.5)


def start_node_cluster(workdir: Path, images: Sequence[Path] = (), timeout: float = 180.0) -> NodeCluster:
    """Start containerd, the control plane, kube-scheduler, kube-proxy and a kubelet under ``workdir``.

    ``images`` (OCI or docker archives) are imported into containerd next to the base image (pause +
    busybox, ``base_image_name()``). Returns once the Node is Ready and the ``default`` ServiceAccount
    and ``kube-root-ca.crt`` exist. On failure everything is stopped and ``ClusterError`` has the log tails.
    """
    from kube.cluster import NODE_CONTROLLERS

    _check_host()
    workdir = Path(workdir).resolve()
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    lock = _take_lock()
    containerd_comps: list[_Component] = []
    cluster: NodeCluster | None = None
    try:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        _ensure_host_interface()
        _start_containerd(workdir, log_dir, containerd_comps, timeout=30)
        # A crashed earlier run may have left containers (containerd reconnects to their shims), mounts
        # and rules behind.
        _purge_containers()
        _clean_host(containerd_state=False)
        base = base_image_archive()
        if not base.is_file():
            raise ClusterError(f"{base} not found: run .ci/install-node.sh")
        _import_images([base, *images])
        plane = start_cluster(
            workdir, timeout=timeout, bind_address=HOST_IP, controllers=NODE_CONTROLLERS,
            service_account_admission=True,
        )  # fmt: skip
        fields = {f.name: getattr(plane, f.name) for f in dataclasses.fields(Cluster)}
        cluster = NodeCluster(**fields, _lock=lock)
        _live[_live.index(plane)] = cluster
        cluster._components.insert(0, containerd_comps[0])  # stopped last, after etcd
        _start_node_components(cluster, log_dir)
        _wait_node_ready(cluster, timeout)
    except BaseException:
        if cluster is not None:
            cluster.stop()
        else:
            for comp in containerd_comps:
                if comp.proc.poll() is None:
                    _purge_containers()
                stop_component(comp, 10.0)
            _clean_host(containerd_state=True)
            lock.close()
        raise
    return cluster
