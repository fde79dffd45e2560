"""The spec: examples validate, every problem is reported with its field path, exit codes are distinct."""

from __future__ import annotations

from pathlib import Path

import pytest

from kompress.jobs.errors import ExitCode, SpecError
from kompress.jobs.spec.document import load_spec_file, parse_document

from conftest import EXAMPLES, example, run_cli, write_spec


@pytest.mark.parametrize("name", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml")))
def test_examples_are_valid(name: str) -> None:
    loaded = load_spec_file(EXAMPLES / name)
    assert loaded.name == Path(name).stem
    assert loaded.spec.steps() or loaded.spec.search is not None  # a fixed pipeline, or a search


def test_bare_spec_is_accepted_and_defaults_apply() -> None:
    loaded = parse_document({"model": {"uri": "m.onnx"}, "data": {"uri": "d.npz"},
                             "techniques": [{"fp16": None}]}, default_name="bare")
    assert loaded.name == "bare"
    name, config = loaded.spec.steps()[0]
    assert name == "fp16" and config.keep_io_types is True
    assert loaded.spec.target.batch_size == 1 and loaded.spec.promotion is None


def problems_of(doc: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    return dict(info.value.problems)


def test_every_problem_is_reported_with_its_path() -> None:
    doc = example("minilm-int8.yaml")
    doc["spec"]["techniques"] = [{"quantize": {"method": "dynamc"}}, {"prune": {"sparsity": -0.5}},
                                 {"distil": {}}, {"fp16": {}, "prune": {}}]
    doc["spec"]["gates"]["minSpeedup"] = "fast"
    doc["spec"]["target"]["colour"] = "blue"
    doc["spec"]["resources"] = {"memory": "lots"}
    problems = problems_of(doc)
    assert "Input should be 'dynamic', 'static' or 'weightOnly'" in problems["spec.techniques[0].quantize.method"]
    assert "greater than or equal to 0" in problems["spec.techniques[1].prune.sparsity"]
    assert "unknown technique 'distil'" in problems["spec.techniques[2]"]
    assert "exactly one key" in problems["spec.techniques[3]"]
    assert "valid number" in problems["spec.gates.minSpeedup"]
    assert problems["spec.target.colour"] == "unknown field"
    assert "Kubernetes quantity" in problems["spec.resources.memory"]


def test_resource_envelope_is_checked() -> None:
    doc = example("minilm-int8.yaml")
    doc["kind"] = "Deployment"
    doc["metadata"]["name"] = "Not_A_Name"
    problems = problems_of(doc)
    assert "expected 'ModelOptimization'" in problems["kind"]
    assert "DNS label" in problems["metadata.name"]


def test_sparsity_must_be_below_one_and_int4_needs_weight_only() -> None:
    base = {"model": {"uri": "m.onnx"}, "data": {"uri": "d.npz"}}
    assert "less than 1" in problems_of({**base, "techniques": [{"prune": {"sparsity": 1.0}}]})[
        "techniques[0].prune.sparsity"]
    assert "weightOnly" in problems_of({**base, "techniques": [{"quantize": {"weights": "int4"}}]})[
        "techniques[0].quantize"]
    # techniques: [] is conversion alone, for a framework model only
    assert any("converts a model to ONNX and nothing more" in m
               for m in problems_of({**base, "model": {"uri": "m.onnx", "format": "onnx"},
                                     "techniques": []}).values())
    keras = {**base, "model": {"uri": "m.keras", "format": "keras"}, "techniques": []}
    assert parse_document(keras).spec.conversion_only


def test_validate_cli_lists_all_problems_and_exits_invalid_input(tmp_path: Path) -> None:
    doc = example("digits-int8.yaml")
    doc["spec"]["techniques"] = [{"prune": {"sparsity": -1}}, {"sharpen": {}}]
    spec = write_spec(tmp_path / "bad.yaml", doc)
    proc = run_cli("validate", str(spec), cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID_INPUT
    assert "2 problem(s)" in proc.stderr
    assert "spec.techniques[0].prune.sparsity" in proc.stderr and "spec.techniques[1]" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = run_cli("validate", str(EXAMPLES / "digits-int8.yaml"), cwd=tmp_path)
    assert ok.returncode == 0 and "valid ModelOptimization 'digits-int8'" in ok.stdout


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("spec: [unclosed\n")
    proc = run_cli("run", str(bad), cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID_INPUT
    assert "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr
    missing = run_cli("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == ExitCode.INVALID_INPUT and "does not exist" in missing.stderr


def test_training_steps_come_first_and_qat_closes_them() -> None:
    base = {"model": {"uri": "m"}, "data": {"uri": "d"}}
    with pytest.raises(SpecError) as err:
        parse_document({**base, "techniques": [{"quantize": {}}, {"prune": {"method": "structured"}}]})
    assert "techniques[1] prune trains in PyTorch, so it must come before the ONNX-only step techniques[0]" \
        in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_document({**base, "techniques": [{"qat": {}}, {"prune": {"method": "structured"}}]})
    assert "techniques[1] prune cannot follow techniques[0] qat" in str(err.value)
    ok = parse_document({**base, "techniques": [{"prune": {"method": "structured"}}, {"qat": {}}]})
    assert [n for n, _ in ok.spec.steps()] == ["prune", "qat"]


def test_kind_and_api_version_are_optional_locally() -> None:
    doc = example("minilm-int8.yaml")
    with_meta = {"metadata": {"name": "local-run"}, "spec": doc["spec"]}
    assert parse_document(with_meta).name == "local-run"
    only_spec = parse_document({"spec": doc["spec"]}, default_name="from-file")
    assert only_spec.name == "from-file" and only_spec.spec == parse_document(doc).spec


def test_wrong_kind_or_api_version_is_still_refused() -> None:
    doc = example("minilm-int8.yaml")
    problems = problems_of({"kind": "Deployment", "spec": doc["spec"]})
    assert problems == {"kind": "expected 'ModelOptimization', got 'Deployment'"}
    problems = problems_of({"apiVersion": "kompress.dev/v9", "spec": doc["spec"]})
    assert problems == {"apiVersion": "expected 'kompress.dev/v1alpha1', got 'kompress.dev/v9'"}
