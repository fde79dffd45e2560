"""The CRD is generated from the pydantic spec (spec) and the operator's typed status model (status): committed
copies must not drift from either, and the generated schema must be structural, described, strict, and carry
the CEL rules and printer columns.

The same CRD against a real kube-apiserver is in test_chart.py."""

from __future__ import annotations

import copy
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from kompress.jobs.spec.document import OptimizationSpec
from kompress.jobs.techniques import catalog as techniques
from kompress.operator import crd
from kompress.operator.status import ModelOptimizationStatus

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "crds" / "modeloptimizations.kompress.dev.yaml",
         ROOT / "charts" / "kompress" / "crds" / "modeloptimizations.kompress.dev.yaml"]
EXAMPLES = sorted((ROOT / "jobs" / "src" / "kompress" / "jobs" / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return crd.crd_manifest()


@pytest.fixture(scope="module")
def version(manifest: dict[str, Any]) -> dict[str, Any]:
    (v,) = manifest["spec"]["versions"]
    return v


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def spec(root: dict[str, Any]) -> dict[str, Any]:
    return root["properties"]["spec"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


# ----------------------------------------------------------------------------------------- drift


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_crd_matches_generator(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} missing: run python scripts/gen_crd.py"
    assert path.read_text(encoding="utf-8") == crd.crd_yaml(), (
        f"{path.relative_to(ROOT)} drifted from the pydantic spec: run python scripts/gen_crd.py and commit it"
    )


def test_gen_crd_check_mode() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_crd.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_gen_crd_check_mode_reports_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("gen_crd", ROOT / "scripts" / "gen_crd.py")
    assert mod_spec and mod_spec.loader
    gen = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(gen)
    stale = tmp_path / "a.yaml"
    stale.write_text(crd.crd_yaml().replace("mopt", "mo"))
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "TARGETS", [stale, tmp_path / "missing.yaml"])
    assert gen.main(["--check"]) == 1
    assert not (tmp_path / "missing.yaml").exists(), "--check must not write"
    assert gen.main([]) == 0
    assert stale.read_text() == crd.crd_yaml() == (tmp_path / "missing.yaml").read_text()
    assert gen.main(["--check"]) == 0


def test_yaml_round_trips(manifest: dict[str, Any]) -> None:
    assert yaml.safe_load(crd.crd_yaml()) == manifest
    assert crd.crd_yaml() == crd.crd_yaml()  # deterministic


# ------------------------------------------------------------------------------------- identity


def test_names_and_scope(manifest: dict[str, Any], version: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == "apiextensions.k8s.io/v1"
    assert manifest["metadata"]["name"] == "modeloptimizations.kompress.dev"
    s = manifest["spec"]
    assert s["group"] == "kompress.dev"
    assert s["scope"] == "Namespaced"
    assert s["names"] == {**s["names"], "kind": "ModelOptimization", "plural": "modeloptimizations",
                          "singular": "modeloptimization", "shortNames": ["mopt"]}
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(cols) == ["Phase", "Model", "Speedup", "Size ratio", "Quality drop", "Metric", "Worst slice",
                          "Tokens/s", "Runtime", "Promoted", "Age"]
    assert cols["Worst slice"]["jsonPath"] == ".status.result.worstSlice" and cols["Worst slice"]["priority"] == 1
    expected = {
        "Phase": (".status.phase", "string"), "Model": (".spec.model.uri", "string"),
        "Speedup": (".status.result.speedup", "number"), "Size ratio": (".status.result.sizeReduction", "number"),
        "Quality drop": (".status.result.accuracyDrop", "number"), "Promoted": (".status.promotedTo", "string"),
        "Metric": (".status.result.qualityMetric", "string"),
        "Tokens/s": (".status.result.decodeTokensPerSecond", "number"),
        "Runtime": (".status.result.runtime", "string"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    for name, (path, type_) in expected.items():
        assert (cols[name]["jsonPath"], cols[name]["type"]) == (path, type_), name
    assert cols["Model"]["priority"] == 0


# ----------------------------------------------------------------------------------- structure


def test_every_property_has_a_description(root: dict[str, Any]) -> None:
    missing = [path for path, node in walk(root)
               if path and path != ".metadata" and not path.endswith(".*") and not node.get("description")
               and (not path.endswith("[]") or node.get("type") == "object")]
    assert not missing, f"schema nodes without a description: {missing}"


def test_structural_and_strict(root: dict[str, Any]) -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "$schema", "uniqueItems"}
    for path, node in walk(root):
        assert "type" in node, f"{path}: no type"
        assert not forbidden & set(node), f"{path}: {sorted(forbidden & set(node))}"
        assert node.get("additionalProperties") is not False, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "properties" not in node, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True and ("minimum" if key == "exclusiveMinimum" else "maximum") in node, path
        if path.startswith(".spec"):
            assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path}: the spec must stay strict"
        assert "default" not in node or node["default"] is not None, path


def test_required_and_optional_fields(spec: dict[str, Any]) -> None:
    assert spec["required"] == ["model", "data"]  # plus exactly one of techniques / search, by a CEL rule
    assert {"rule": "has(self.techniques) != has(self.search)",
            "message": "give exactly one of techniques (a fixed pipeline) or search (candidate recipes)"} \
        in spec["x-kubernetes-validations"]
    props = spec["properties"]
    assert props["model"]["required"] == ["uri"]
    formats = props["model"]["properties"]["format"]["enum"]
    assert formats == ["onnx", "huggingface", "torch-export", "gguf", "keras", "tensorflow", "sklearn"]
    from kompress.jobs.io.frameworks import registry as frameworks

    assert set(frameworks.names()) <= set(formats)  # every converter is a format the API server accepts
    assert "required" not in props["gates"]
    assert props["promotion"]["required"] == ["registry", "modelName"]
    assert props["promotion"]["properties"]["approved"] == {
        **props["promotion"]["properties"]["approved"], "type": "boolean", "default": False}
    assert props["target"]["properties"]["runtime"]["enum"] == ["onnxruntime", "openvino", "onnxruntime-genai",
                                                                 "openvino-genai", "auto"]
    assert props["resources"]["properties"]["nodeSelector"]["additionalProperties"] == {"type": "string"}


def test_numeric_constraints(spec: dict[str, Any]) -> None:
    props = spec["properties"]
    techniques_node = props["techniques"]
    assert "minItems" not in techniques_node  # [] is conversion alone, for framework models (a CEL rule)
    assert any("conversion to ONNX alone" in r["message"] for r in spec["x-kubernetes-validations"])
    sparsity = techniques_node["items"]["properties"]["prune"]["properties"]["sparsity"]
    assert (sparsity["minimum"], sparsity["maximum"], sparsity["exclusiveMaximum"]) == (0, 1, True)
    assert "exclusiveMinimum" not in sparsity
    assert props["resources"]["properties"]["gpu"]["minimum"] == 0
    speedup = props["gates"]["properties"]["minSpeedup"]
    assert (speedup["minimum"], speedup["exclusiveMinimum"]) == (0, True)


def test_techniques_item_rule_comes_from_the_registry(spec: dict[str, Any]) -> None:
    item = spec["properties"]["techniques"]["items"]
    assert set(item["properties"]) == set(techniques.names())
    assert "exactly one technique key" in item["description"]
    (rule,) = item["x-kubernetes-validations"]
    for name in techniques.names():
        assert f"has(self.{name})" in rule["rule"]
    assert rule["rule"].endswith(".filter(x, x).size() == 1")


@pytest.mark.parametrize("field", ["model", "data", "techniques", "target"])
def test_immutable_fields(spec: dict[str, Any], field: str) -> None:
    rules = spec["properties"][field]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf",
            "message": f"spec.{field} is immutable; create a new ModelOptimization"} in rules


def test_mutable_fields_have_no_transition_rules(spec: dict[str, Any]) -> None:
    for field in ("gates", "promotion", "resources", "storageSecretRef"):
        rules = spec["properties"][field].get("x-kubernetes-validations", [])
        assert not any("oldSelf" in r["rule"] for r in rules), field


def test_status_schema(root: dict[str, Any]) -> None:
    status = root["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Running", "Evaluating", "Succeeded", "Rejected", "Failed"]
    conds = status["conditions"]
    assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]
    item = conds["items"]
    assert "type" in item["required"] and "status" in item["required"]
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    for name in ("observedGeneration", "attempts", "promotedVersion"):
        assert status[name]["type"] == "integer", name
    for name in ("startedAt", "finishedAt"):
        assert status[name]["format"] == "date-time", name
    metrics = {"latencyP50Seconds", "latencyP95Seconds", "latencyP99Seconds", "throughputPerSecond", "sizeBytes",
               "peakMemoryBytes", "energyPerInferenceJoules", "accuracy", "cosineSimilarity", "runtime", "precision",
               # text-generation
               "perplexity", "klDivergence", "tokenAgreement", "decodeTokensPerSecond", "timeToFirstTokenSeconds",
               "energyPerTokenJoules",
               # agreement with the baseline beyond cosine (classifiers, embeddings)
               "top1Agreement", "neighborAgreement", "rankCorrelation", "classAccuracyDrop"}
    assert set(status["baseline"]["properties"]) == metrics
    assert set(status["result"]["properties"]) == metrics | {
        "speedup", "speedupSpread", "sizeReduction", "energyReduction", "accuracyDrop", "qualityMetric",
        "energyMethod", "runEnergyJoules", "durationSeconds", "perplexityIncrease",
        # evaluation slices and confidence intervals
        "intervals", "intervalLevel", "slices", "worstSlice"}
    slice_item = status["result"]["properties"]["slices"]["items"]
    assert {"name", "samples", "cosineSimilarity", "accuracyDrop", "intervals"} <= set(slice_item["properties"])
    assert status["warnings"]["items"] == {"type": "string"}
    assert status["result"]["properties"]["sizeBytes"]["type"] == "integer"
    assert status["gates"]["properties"]["failures"]["items"] == {"type": "string"}


def test_status_blocks_of_a_report_fit_the_schema(root: dict[str, Any]) -> None:
    """The engine's status blocks (what the operator copies into status) use only fields the schema has,
    so the apiserver prunes nothing from them; every field of the report's blocks is in the schema."""
    from kompress.jobs.report.model import MetricsBlock, ResultBlock

    status = root["properties"]["status"]["properties"]
    for block, model in (("baseline", MetricsBlock), ("result", ResultBlock)):
        fields = {f.alias for f in model.model_fields.values()}
        assert fields == set(status[block]["properties"]), block


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (X, X | None, list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, typing.get_args(annotation)) if m is not None), None)


def model_tree(model: type[BaseModel]) -> dict[str, Any]:
    """Field aliases of `model`, nested models (and lists of them) as sub-trees."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = _model_in(info.annotation)
        out[info.alias or name] = model_tree(sub) if sub else None
    return out


def schema_tree(node: dict[str, Any]) -> dict[str, Any]:
    """Property names of a CRD schema node, objects (and arrays of objects) as sub-trees."""
    out: dict[str, Any] = {}
    for name, sub in node["properties"].items():
        inner = sub.get("items", sub)
        out[name] = schema_tree(inner) if "properties" in inner else None
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_status_schema_is_the_status_model(path: Path) -> None:
    """Every field of the operator's status model, nested ones included, is in the committed CRD's status and
    nothing else is: the apiserver would prune a field the operator writes and the CRD lacks."""
    committed = yaml.safe_load(path.read_text(encoding="utf-8"))
    (v,) = committed["spec"]["versions"]
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert schema_tree(status) == model_tree(ModelOptimizationStatus), (
        f"{path.relative_to(ROOT)}: status drifted from kompress.operator.status: run python scripts/gen_crd.py")
    assert status == crd.status_schema()


def test_a_status_model_change_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift check covers the status: a new status field makes the generated CRD differ from the committed
    one (and gen_crd.py --check fail) until the CRD is regenerated."""
    from kompress.operator import status as status_module

    class Drifted(status_module.ModelOptimizationStatus):
        queue_position: int | None = None
        """Where the run waits in the queue."""

    before = crd.crd_yaml()
    monkeypatch.setattr(crd, "ModelOptimizationStatus", Drifted)
    after = crd.crd_yaml()
    assert after != before and "queuePosition:" in after
    assert all(path.read_text(encoding="utf-8") != after for path in FILES)
    assert crd.status_schema()["properties"]["queuePosition"] == {
        "type": "integer", "description": "Where the run waits in the queue."}


def test_status_schema_has_no_defaults_and_keeps_nothing_unknown(root: dict[str, Any]) -> None:
    """Observed state: the apiserver must not write defaults into it, nor keep fields nobody declared."""
    for path, node in walk(root["properties"]["status"], ".status"):
        assert "default" not in node, path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path


def test_every_status_field_is_described(root: dict[str, Any]) -> None:
    """Every field of the status schema, the engine's metric blocks included, carries a description (kubectl
    explain shows it)."""
    for path, node in walk(root["properties"]["status"], ".status"):
        if not path.endswith("[]"):  # a list's items are described by the list
            assert node.get("description"), path


# ------------------------------------------------------------------------------------ defaults


def test_crd_defaults_agree_with_pydantic(spec: dict[str, Any]) -> None:
    """What the apiserver fills in from the CRD's defaults is what pydantic would assume anyway."""
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())["spec"]
        defaulted = crd.apply_defaults(spec, copy.deepcopy(body))
        assert defaulted != body  # the CRD does default things
        assert OptimizationSpec.model_validate(defaulted) == OptimizationSpec.model_validate(body), path.name
    required = {"distill": {"student": {"layers": 3}}}  # techniques whose config has a required field
    for name in techniques.names():
        generative = techniques.get(name).stage == "generation"  # weightOnly: a causal language model's
        minimal = {"model": {"uri": "s3://m/x.gguf", "task": "text-generation"} if generative
                   else {"uri": "s3://m/x.onnx"}, "data": {"uri": "s3://d/x.npz"},
                   "techniques": [{name: required.get(name, {})}]}
        defaulted = crd.apply_defaults(spec, copy.deepcopy(minimal))
        assert defaulted["target"]["iterations"] == OptimizationSpec.model_validate(minimal).target.iterations
        assert OptimizationSpec.model_validate(defaulted) == OptimizationSpec.model_validate(minimal), name


def test_object_defaults_are_compact(spec: dict[str, Any]) -> None:
    for field in ("target", "gates", "resources"):
        assert spec["properties"][field]["default"] == {}, field


# ----------------------------------------------------------------------------------- converter


def _convert(schema: dict[str, Any]) -> dict[str, Any]:
    return crd._Converter(schema).convert(schema, "spec")


def test_converter_inlines_refs_and_nullables() -> None:
    schema = {
        "$defs": {"Inner": {"type": "object", "title": "Inner", "additionalProperties": False,
                            "properties": {"k": {"const": "x", "type": "string", "description": "k"}}}},
        "type": "object", "title": "T",
        "properties": {
            "a": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "default": None, "description": "A."},
            "n": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}], "description": "N."},
        },
    }
    out = _convert(schema)
    assert out == {
        "type": "object",
        "properties": {
            "a": {"type": "object", "description": "A.",
                  "properties": {"k": {"enum": ["x"], "type": "string", "description": "k"}}},
            "n": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "description": "N."},
        },
    }


@pytest.mark.parametrize("bad", [
    {"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
    {"type": "object", "properties": {"x": {"type": "object", "additionalProperties": True}}},
    {"type": "object", "properties": {"x": {"description": "no type"}}},
    {"type": "object", "properties": {"x": {"type": "string", "unknownKeyword": 1}}},
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}},
])
def test_converter_refuses_what_it_cannot_translate(bad: dict[str, Any]) -> None:
    with pytest.raises(crd.CRDSchemaError):
        _convert(bad)
