"""Registry promotion: atomic, idempotent, versioned, Triton layout — locally and in a real S3 server."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from kompress.jobs.io.data import InputSpec
from kompress.jobs.registry import repository as registry

INPUTS = [InputSpec("pixels", "tensor(float)", ("batch", 1, 8, 8))]
OUTPUTS = [InputSpec("logits", "tensor(float)", ("batch", 10))]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    f = tmp_path / "built" / "model.onnx"
    f.parent.mkdir()
    f.write_bytes(b"onnx-bytes" * 100)
    return f


def promote(uri: str, model_file: Path, key: str) -> registry.Promotion:
    return registry.promote(uri, "digits", [str(model_file)], {"name": "t"}, key, INPUTS, OUTPUTS)


def check_layout(read: Any, version: int, key: str) -> None:
    manifest = json.loads(read(f"digits/{version}/kompress.json"))
    assert manifest["promotionKey"] == key and manifest["version"] == version
    assert read(f"digits/{version}/model.onnx") == b"onnx-bytes" * 100
    config = read("digits/config.pbtxt").decode()
    assert 'platform: "onnxruntime_onnx"' in config and 'name: "pixels"' in config
    assert "dims: [ 1, 8, 8 ]" in config and "TYPE_FP32" in config


def test_local_promotion_is_idempotent_and_versioned(tmp_path: Path, model_file: Path) -> None:
    reg = tmp_path / "registry"
    first = promote(str(reg), model_file, "key-a")
    again = promote(str(reg), model_file, "key-a")
    other = promote(str(reg), model_file, "key-b")
    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created) == (1, False)
    assert (other.version, other.created) == (2, True)
    check_layout(lambda rel: (reg / rel).read_bytes(), 1, "key-a")
    assert sorted(p.name for p in (reg / "digits").iterdir() if not p.name.startswith(".")) == [
        "1", "2", "config.pbtxt"]
    assert [v["version"] for v in registry.list_versions(str(reg), "digits")] == [1, 2]


def test_concurrent_promotions_never_share_a_version(tmp_path: Path, model_file: Path) -> None:
    reg = tmp_path / "registry"
    results: list[registry.Promotion] = []
    threads = [threading.Thread(target=lambda k=k: results.append(promote(str(reg), model_file, f"key-{k}")))
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r in results) == list(range(1, 9))
    assert not [p for p in (reg / "digits").iterdir() if p.name.startswith(".staging")]


def test_interrupted_promotion_is_completed_not_duplicated(tmp_path: Path, model_file: Path) -> None:
    reg = tmp_path / "registry"
    # a crash after claiming version 1 and before publishing it
    (reg / "digits" / ".claims").mkdir(parents=True)
    (reg / "digits" / ".claims" / "1").write_text("key-a")
    result = promote(str(reg), model_file, "key-a")
    assert (result.version, result.created) == (1, True)
    assert registry.find_existing(registry.open_store(str(reg)), "digits", "key-a") == 1


@pytest.mark.s3
def test_s3_promotion_is_idempotent_and_versioned(s3: Any, model_file: Path) -> None:
    s3.create_bucket(Bucket="registry-test")
    uri = "s3://registry-test/models"
    first = promote(uri, model_file, "key-a")
    again = promote(uri, model_file, "key-a")
    other = promote(uri, model_file, "key-b")
    assert [(p.version, p.created) for p in (first, again, other)] == [(1, True), (1, False), (2, True)]
    assert first.uri == "s3://registry-test/models/digits/1"

    def read(rel: str) -> bytes:
        return s3.get_object(Bucket="registry-test", Key=f"models/{rel}")["Body"].read()

    check_layout(read, 1, "key-a")
    # two writers racing for the same number: the conditional write lets exactly one win
    store = registry.open_store(uri)
    assert store.create_exclusive("digits/.claims/3", b"x") is True
    assert store.create_exclusive("digits/.claims/3", b"y") is False
    assert promote(uri, model_file, "key-c").version == 4


PROMOTE_IN_A_CHILD = r"""
import json, sys
import botocore.client
from kompress.jobs.spec.sections import PromotionSpec
from kompress.operator.reconciler import promote_run

calls = []  # every S3 operation this process makes, with its key
make_call = botocore.client.BaseClient._make_api_call
def recording(self, operation, params):
    calls.append([operation, params.get("Key", "")])
    return make_call(self, operation, params)
botocore.client.BaseClient._make_api_call = recording

report_uri, model_uri, secret = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
promotion = PromotionSpec(registry="s3://copy-registry/serving", modelName=sys.argv[4], policy="auto")
result = promote_run(report_uri, model_uri, promotion, "uid-1", secret)
# VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork and exec
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"uri": result.uri, "peakKiB": peak, "calls": calls}))
"""


def _upload_run(s3: Any, prefix: str, data_bytes: int, tmp_path: Path) -> tuple[str, str]:
    """A finished run in S3 as a Job leaves it: report.json naming the model's two files (the graph and
    `data_bytes` of external data), and the files themselves."""
    from kompress.jobs.report.model import OptimizationReport

    base = f"s3://copy-runs/{prefix}"
    big = tmp_path / f"{prefix}.data"
    with big.open("wb") as f:  # sparse-free random-ish bytes, written in chunks
        chunk = bytes(range(256)) * 4096
        for _ in range(data_bytes // len(chunk)):
            f.write(chunk)
    s3.put_object(Bucket="copy-runs", Key=f"{prefix}/model.onnx", Body=b"graph" * 1000)
    s3.upload_file(str(big), "copy-runs", f"{prefix}/model.onnx.data")
    big.unlink()
    rep = OptimizationReport.model_validate(_minimal_report(base))
    s3.put_object(Bucket="copy-runs", Key=f"{prefix}/report.json", Body=rep.model_dump_json(by_alias=True).encode())
    return f"{base}/report.json", f"{base}/model.onnx"


def _minimal_report(base: str) -> dict[str, Any]:
    """The fields promotion reads: model, data, optimized, signature, artifacts."""
    return {
        "apiVersion": "kompress.dev/v1alpha1", "name": "copy", "startedAt": "2026-01-01T00:00:00Z",
        "spec": {"model": {"uri": "s3://models/m.onnx"}}, "outcome": "succeeded",
        "environment": {"platform": "test", "machine": "x86_64", "seed": 0, "libraries": {}},
        "model": {"uri": "s3://models/m.onnx", "format": "onnx", "sha256": "a" * 64, "inputs": ["x"]},
        "data": {"uri": "s3://data/d.npz", "sha256": "b" * 64, "samples": 2, "calibrationSamples": 1,
                 "evaluationSamples": 1, "calibrationOverlapsEvaluation": False, "labels": False},
        "optimized": {"sizeBytes": 1, "sha256": "c" * 64},
        "signature": {"inputs": [{"name": "x", "dtype": "tensor(float)", "shape": ["batch", 4]}],
                      "outputs": [{"name": "y", "dtype": "tensor(float)", "shape": ["batch", 2]}]},
        "artifacts": {"model": f"{base}/model.onnx", "modelFiles": [f"{base}/model.onnx",
                                                                    f"{base}/model.onnx.data"]},
    }


@pytest.mark.s3
def test_operator_promotion_copies_server_side_and_holds_no_model_bytes(s3: Any, s3_server: Any,
                                                                         tmp_path: Path) -> None:
    """Promotion as the operator runs it (reconciler.promote_run, in a child process like the operator's):
    a 160 MB model with external data is copied by the S3 server into the registry, both files, with the
    operator's peak memory the same as for a 40 MB one and nothing big written to its /tmp."""
    import subprocess
    import sys

    for bucket in ("copy-runs", "copy-registry"):
        s3.create_bucket(Bucket=bucket)
    secret = json.dumps(s3_server.env())
    peaks = {}
    # both above the multipart threshold (the copy runs in parts, on boto3's thread pool, either way)
    for name, size in (("small", 40 << 20), ("big", 160 << 20)):
        report_uri, model_uri = _upload_run(s3, name, size, tmp_path)
        scratch = tmp_path / f"tmp-{name}"
        scratch.mkdir()
        proc = subprocess.run([sys.executable, "-c", PROMOTE_IN_A_CHILD, report_uri, model_uri, secret, name],
                              capture_output=True, text=True, timeout=300, check=False,
                              env={**{k: v for k, v in __import__("os").environ.items() if not k.startswith("AWS_")},
                                   "TMPDIR": str(scratch)})
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uri"] == f"s3://copy-registry/serving/{name}/1"
        peaks[name] = out["peakKiB"]
        # the model's bytes are never read nor written by the operator: the S3 server copies them
        model_calls = [(op, key) for op, key in out["calls"] if "model.onnx" in key]
        assert not [c for c in model_calls if c[0] in ("GetObject", "PutObject", "UploadPart")], model_calls
        assert sorted(op for op, _ in model_calls if op == "CopyObject") == ["CopyObject", "CopyObject"]
        assert not [p for p in scratch.rglob("*") if p.is_file() and p.stat().st_size > (1 << 20)]
        head = s3.head_object(Bucket="copy-registry", Key=f"serving/{name}/1/model.onnx.data")
        assert head["ContentLength"] == (size // (256 * 4096)) * 256 * 4096
        assert s3.head_object(Bucket="copy-registry", Key=f"serving/{name}/1/model.onnx")["ContentLength"] == 5000
        manifest = json.loads(s3.get_object(Bucket="copy-registry", Key=f"serving/{name}/1/kompress.json")["Body"]
                              .read())
        assert manifest["version"] == 1
    # 120 MB more of model through the operator would add at least that much; a server-side copy adds nothing
    assert peaks["big"] - peaks["small"] < 16 * 1024, peaks


def _model_config_class() -> Any:
    """A message class for the part of Triton's ModelConfig (model_config.proto) that triton_config writes,
    so the real protobuf text parser checks the syntax, the field names and the enum values."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="kompress_test_model_config.proto", package="kt")
    data_type = file.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                   "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64",
                                   "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        data_type.value.add(name=name, number=number)

    def message(name: str, *fields: tuple[str, int, str | None, bool]) -> None:
        msg = file.message_type.add(name=name)
        for number, (field, kind, type_name, repeated) in enumerate(fields, start=1):
            added = msg.field.add(name=field, number=number, type=kind,
                                  label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL)
            if type_name:
                added.type_name = type_name

    message("Reshape", ("shape", f.TYPE_INT64, None, True))
    for name in ("ModelInput", "ModelOutput"):
        message(name, ("name", f.TYPE_STRING, None, False), ("data_type", f.TYPE_ENUM, ".kt.DataType", False),
                ("dims", f.TYPE_INT64, None, True), ("reshape", f.TYPE_MESSAGE, ".kt.Reshape", False))
    message("Latest", ("num_versions", f.TYPE_UINT32, None, False))
    message("VersionPolicy", ("latest", f.TYPE_MESSAGE, ".kt.Latest", False))
    message("DynamicBatching")
    message("ModelConfig", ("name", f.TYPE_STRING, None, False), ("platform", f.TYPE_STRING, None, False),
            ("max_batch_size", f.TYPE_INT32, None, False), ("input", f.TYPE_MESSAGE, ".kt.ModelInput", True),
            ("output", f.TYPE_MESSAGE, ".kt.ModelOutput", True),
            ("version_policy", f.TYPE_MESSAGE, ".kt.VersionPolicy", False),
            ("dynamic_batching", f.TYPE_MESSAGE, ".kt.DynamicBatching", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kt.ModelConfig"))


def parse_config(text: str) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_class()())


def test_triton_config_batches_when_the_batch_axis_is_free() -> None:
    text = registry.triton_config("digits", INPUTS, OUTPUTS)
    assert "max_batch_size: 64\n" in text and "dynamic_batching { }" in text
    config = parse_config(text)
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in (*config.input, *config.output)] == [("pixels", [1, 8, 8]),
                                                                                 ("logits", [10])]
    assert config.version_policy.latest.num_versions == 1


def test_triton_config_does_not_batch_a_fixed_batch_axis() -> None:
    inputs = [InputSpec("ids", "tensor(int64)", (1, "seq")), InputSpec("mask", "tensor(int64)", (1, "seq"))]
    outputs = [InputSpec("embedding", "tensor(float)", (1, 384))]
    text = registry.triton_config("minilm", inputs, outputs)
    assert "max_batch_size: 0\n" in text and "dynamic_batching" not in text
    config = parse_config(text)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*config.input, *config.output)] == [[1, -1], [1, -1], [1, 384]]
    # a scalar tensor cannot be batched either; Triton writes it as [1] reshaped to []
    scalar = registry.triton_config("m", [InputSpec("t", "tensor(float)", ())], outputs)
    config = parse_config(scalar)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1]
    assert config.input[0].HasField("reshape") and not config.input[0].reshape.shape


def test_triton_config_escapes_names() -> None:
    odd = 'in"put\\1\nné'
    text = registry.triton_config('my "model"', [InputSpec(odd, "tensor(float)", ("b", 3))], OUTPUTS)
    assert 'name: "my \\"model\\""' in text and 'name: "in\\"put\\\\1\\nn\\303\\251"' in text
    config = parse_config(text)
    assert config.name == 'my "model"' and config.input[0].name == odd


def test_local_promotion_is_readable_by_other_users(tmp_path: Path, model_file: Path) -> None:
    import os
    import stat

    reg = tmp_path / "registry"
    old = os.umask(0o077)  # even a strict umask must not hide the registry from the model server
    try:
        promote(str(reg), model_file, "key-a")
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(reg / "digits") == 0o755 and mode(reg / "digits" / "1") == 0o755
    assert mode(reg / "digits" / "config.pbtxt") == 0o644
    assert mode(reg / "digits" / "1" / "model.onnx") == 0o644
    assert mode(reg / "digits" / "1" / "kompress.json") == 0o644
    assert mode(reg / "digits" / ".claims" / "1") == 0o644


@pytest.mark.s3
def test_operator_refuses_model_files_outside_s3(s3: Any, s3_server: Any) -> None:
    """A Job's report is input: a local path there would have the operator copy its own disk into the registry."""
    from kompress.jobs.errors import KompressError
    from kompress.jobs.report.model import OptimizationReport
    from kompress.jobs.spec.sections import PromotionSpec
    from kompress.operator.reconciler import promote_run

    s3.create_bucket(Bucket="hostile-runs")
    doc = _minimal_report("s3://hostile-runs/r")
    doc["artifacts"]["modelFiles"] = ["/etc/hostname"]
    s3.put_object(Bucket="hostile-runs", Key="r/report.json",
                  Body=OptimizationReport.model_validate(doc).model_dump_json(by_alias=True).encode())
    promotion = PromotionSpec(registry="s3://hostile-runs/serving", modelName="m", policy="auto")
    with pytest.raises(KompressError, match="outside S3"):
        promote_run("s3://hostile-runs/r/report.json", "/etc/hostname", promotion, "uid", s3_server.env())
    assert "Contents" not in s3.list_objects_v2(Bucket="hostile-runs", Prefix="serving/")


@pytest.mark.s3
def test_a_promotion_cut_off_mid_copy_is_finished_once(s3: Any, s3_server: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator dies after the S3 server copied the model's files and before the manifest: the next
    attempt (a restarted operator promotes the same run again) finishes that version, and there is one."""
    from kompress.jobs.io import storage

    for bucket in ("copy-runs", "copy-registry"):  # the session's MinIO: another test may have made them
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    _upload_run(s3, "cut", 2 << 20, tmp_path)
    sources = ["s3://copy-runs/cut/model.onnx", "s3://copy-runs/cut/model.onnx.data"]
    promote_once = registry.promote
    write = storage.S3Store.write

    def dies_at_the_manifest(self: storage.S3Store, rel: str, data: bytes) -> None:
        if rel.endswith("/kompress.json"):
            raise SystemExit("operator killed")  # not an Exception: nothing in promote may catch it
        write(self, rel, data)

    with storage.credentials(s3_server.env()):
        monkeypatch.setattr(storage.S3Store, "write", dies_at_the_manifest)
        with pytest.raises(SystemExit):
            promote_once("s3://copy-registry/serving", "cut", sources, {"name": "t"}, "key-cut", INPUTS, OUTPUTS)
        monkeypatch.setattr(storage.S3Store, "write", write)
        again = promote_once("s3://copy-registry/serving", "cut", sources, {"name": "t"}, "key-cut", INPUTS, OUTPUTS)
        twice = promote_once("s3://copy-registry/serving", "cut", sources, {"name": "t"}, "key-cut", INPUTS, OUTPUTS)
    assert (again.version, again.created) == (1, True) and (twice.version, twice.created) == (1, False)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="copy-registry", Prefix="serving/cut/")["Contents"]}
    assert {"serving/cut/1/model.onnx", "serving/cut/1/model.onnx.data", "serving/cut/1/kompress.json"} <= keys
    assert not [k for k in keys if k.startswith("serving/cut/2")], keys
