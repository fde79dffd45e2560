"""The operator at scale: N ModelOptimizations applied at once (one `kubectl apply`) on the real kube-apiserver,
etcd and Job controller (tests/kube/cluster.py), with the operator as a real `kopf run` process.

Measured: apply-to-Job latency (from when a resource is first seen in the API to when its Job is, both by
one poller every 50 ms; p50/p99), the time until every resource is in a final phase, and the operator's peak
RSS (VmHWM).

The engine is not the subject here, so the stand-in kubelet (tests/kube/kubelet.py) runs a short engine
stand-in in each pod: a Python process that writes a canned run summary (the report contract's RunSummary) to
the termination log and exits 0; the operator then evaluates the gates from it as from any Job. Targets (from
the issue): p99 apply-to-Job under 2 s, operator RSS under 200 MB. A benchmark, not a test.

Run: python bench/operator_scale.py [--resources 500] [--parallel 16] [--out bench/results/operator-scale.json]
Needs the binaries of .ci/build-kube.sh and kubectl (make servers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kube.cluster import start_cluster  # noqa: E402
from kube.fixtures import kubectl  # noqa: E402
from kube.kubelet import FakeKubelet  # noqa: E402

GROUP_PATH = "/apis/kompress.dev/v1alpha1"
FINAL = {"Succeeded", "Rejected", "Failed"}
# what a finished engine run reports (kompress.jobs.report.model.RunSummary): a measured, passing result
SUMMARY = {"outcome": "succeeded", "message": "canned", "baseline": {"latencyP50Seconds": 0.002, "sizeBytes": 600000},
           "result": {"latencyP50Seconds": 0.001, "speedup": 2.0, "sizeBytes": 160000, "sizeReduction": 3.75,
                      "accuracyDrop": 0.0}}
ENGINE = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"


class ShortEngineKubelet(FakeKubelet):
    """Runs, in place of `kompress run`, a process that reports the canned summary at once."""

    def _prepare(self, pod: Any, container: dict[str, Any]) -> Any:
        prepared = super()._prepare(pod, container)
        prepared.argv = [sys.executable, "-S", "-c", ENGINE, str(prepared.termination_file), json.dumps(SUMMARY)]
        return prepared


def resources(count: int) -> str:
    docs = []
    for i in range(count):
        docs.append(yaml.safe_dump({
            "apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": f"scale-{i:04d}"},
            "spec": {"model": {"uri": "s3://models/digits/model.onnx", "format": "onnx", "task": "classification"},
                     "data": {"uri": "s3://data/digits-eval.npz"}, "techniques": [{"quantize": {"method": "static"}}],
                     "gates": {"noRegression": False, "maxAccuracyDrop": 0.01},
                     "resources": {"cpu": "100m", "memory": "256Mi"}}}))
    return "---\n".join(docs)


def watch(cluster: Any, namespace: str, created: dict[str, float], jobs: dict[str, float],
          stop: threading.Event) -> None:
    """When each resource and each resource's Job is first seen (lists polled every 50 ms, by one thread, so
    both sides of a latency are seen the same way)."""
    while not stop.is_set():
        now = time.monotonic()
        for obj in cluster.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/modeloptimizations")["items"]:
            created.setdefault(obj["metadata"]["name"], now)
        for job in cluster.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]:
            jobs.setdefault(job["metadata"]["labels"]["kompress.dev/name"], now)
        stop.wait(0.05)


def operator(kubeconfig: Path, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"KUBECONFIG": str(kubeconfig), "KOMPRESS_METRICS_PORT": "0", "KOMPRESS_ENGINE_IMAGE": "kompress:scale"}
    return subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                             "-m", "kompress.operator.handlers"], env=env, cwd=workdir,
                            stdout=(workdir / "operator.log").open("wb"), stderr=subprocess.STDOUT)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main() -> None:
    # long: one benchmark run from start to report
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=16, help="pods the stand-in kubelet runs at once")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "operator-scale.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cluster = start_cluster(work / "kube")
        try:
            for crd in (ROOT / "crds").glob("*.yaml"):
                assert kubectl(cluster, "apply", "-f", str(crd)).returncode == 0
            assert kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s",
                           "crd/modeloptimizations.kompress.dev").returncode == 0
            assert kubectl(cluster, "create", "namespace", "scale").returncode == 0
            kubelet = ShortEngineKubelet(cluster, extra_env={}, workdir=work / "kubelet",
                                         max_parallel=args.parallel).start()
            proc = operator(cluster.kubeconfig, work)
            time.sleep(5)  # the operator starts watching
            created: dict[str, float] = {}
            seen: dict[str, float] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=watch, args=(cluster, "scale", created, seen, stop), daemon=True)
            watcher.start()
            t0 = time.monotonic()
            applied = kubectl(cluster, "apply", "-n", "scale", "-f", "-", input=resources(args.resources),
                              timeout=600)
            assert applied.returncode == 0, applied.stderr
            apply_seconds = time.monotonic() - t0
            print(f"applied {args.resources} resources in {apply_seconds:.1f}s", flush=True)
            final_seconds = None
            while time.monotonic() - t0 < args.timeout:
                items = cluster.request("GET", f"{GROUP_PATH}/namespaces/scale/modeloptimizations")["items"]
                done = sum((i.get("status") or {}).get("phase") in FINAL for i in items)
                if done == args.resources:
                    final_seconds = time.monotonic() - t0
                    break
                print(f"  {time.monotonic() - t0:5.0f}s: {len(seen)} Jobs, {done} final", flush=True)
                time.sleep(5)
            stop.set()
            phases = [(i.get("status") or {}).get("phase") for i in items]
            latencies = sorted(t - created[name] for name, t in seen.items() if name in created)
            rss = peak_rss_mib(proc.pid)
            proc.terminate()
            kubelet.stop()
        finally:
            cluster.stop()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    result = {"resources": args.resources, "applySeconds": round(apply_seconds, 2), "jobs": len(latencies),
              "applyToJobP50Seconds": round(statistics.median(latencies), 2) if latencies else None,
              "applyToJobP99Seconds": round(p99, 2) if p99 is not None else None,
              "allFinalSeconds": round(final_seconds, 1) if final_seconds else None,
              "succeeded": phases.count("Succeeded"), "operatorPeakRssMiB": round(rss, 1)}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
