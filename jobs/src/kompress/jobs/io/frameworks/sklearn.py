"""scikit-learn estimators and pipelines, converted to ONNX with skl2onnx.

Loading never unpickles by default: a `.skops` file is read by skops, which builds only the types it trusts
(scikit-learn's and numpy's own; a type it does not trust by default, such as a tree's internal `Tree`, must be
named in model.trustedTypes), and a pickle or joblib file is refused unless the spec says model.trustPickle
(unpickling runs whatever code the file holds). A classifier's graph gives its class probabilities first (what
quality is measured on) and its labels second; the input is one float32 matrix named `input`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.frameworks.base import OPSET, Converted, Framework, Loaded, as_float32, first_line, versions
from kompress.jobs.spec.sections import ModelSpec

INPUT = "input"
SKOPS = (".skops",)
PICKLES = (".pkl", ".pickle", ".joblib")


class Estimator(Loaded):
    def __init__(self, model: Any) -> None:
        self.model = model
        self.classifier = hasattr(model, "predict_proba")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        (x,) = inputs
        if self.classifier:
            return [as_float32(self.model.predict_proba(x)), np.asarray(self.model.predict(x))]
        if hasattr(self.model, "transform") and not hasattr(self.model, "predict"):
            return [as_float32(self.model.transform(x))]
        return [as_float32(np.asarray(self.model.predict(x)).reshape(len(x), -1))]


class ScikitLearn(Framework):
    name = "sklearn"
    summary = ("a scikit-learn estimator or pipeline (.skops; a pickle only with model.trustPickle), converted to "
               "ONNX with skl2onnx")
    modules = ("sklearn", "skl2onnx", "skops")
    extra = "sklearn"

    def recognizes(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in SKOPS + PICKLES

    def load(self, local: Path, *, trust_pickle: bool, trusted_types: list[str]) -> Any:
        suffix = local.suffix.lower()
        if suffix in PICKLES:
            if not trust_pickle:
                raise InvalidInputError(
                    f"{local.name} is a pickle: unpickling runs whatever code the file holds, so kompress does not "
                    "load one by default. Save the model with skops (skops.io.dump(model, 'model.skops')), or set "
                    "model.trustPickle: true if you trust whoever wrote this file", field="model.uri")
            import joblib

            return joblib.load(local)
        if suffix not in SKOPS:
            raise InvalidInputError(f"{local.name}: a scikit-learn model is a .skops file (or, with "
                                    "model.trustPickle, a .pkl/.joblib pickle)", field="model.uri")
        import skops.io

        try:
            untrusted = skops.io.get_untrusted_types(file=local)
        except Exception as err:
            raise InvalidInputError(f"{local.name} is not a readable skops file ({first_line(err)})",
                                    field="model.uri") from None
        refused = [t for t in untrusted if t not in trusted_types]
        if refused and not trust_pickle:
            raise InvalidInputError(
                f"{local.name} holds types skops does not trust by default: {', '.join(refused)}; name those you "
                "trust in model.trustedTypes (nothing else is built from the file)", field="model.trustedTypes")
        return skops.io.load(local, trusted=untrusted if trust_pickle else [t for t in untrusted
                                                                            if t in trusted_types])

    def convert(self, local: Path, workdir: Path, model: ModelSpec) -> Converted:
        import onnx
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        estimator = self.load(local, trust_pickle=model.trust_pickle, trusted_types=model.trusted_types)
        features = getattr(estimator, "n_features_in_", None)
        if features is None:
            raise InvalidInputError(f"{local.name} holds a {type(estimator).__name__} that was never fitted (no "
                                    "n_features_in_)", field="model.uri")
        started = time.perf_counter()
        options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
        try:
            proto = to_onnx(estimator, initial_types=[(INPUT, FloatTensorType([None, int(features)]))],
                            target_opset=OPSET, options=options)
        except Exception as err:
            raise InvalidInputError(f"skl2onnx cannot convert {type(estimator).__name__}: {first_line(err)}",
                                    field="model.uri") from None
        if options:  # probabilities first: what quality is measured on (top-1 of them is the label)
            outputs = sorted(proto.graph.output, key=lambda o: o.name != "probabilities")
            del proto.graph.output[:]
            proto.graph.output.extend(outputs)
        out = workdir / "converted" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(out))
        route = (f"skl2onnx {versions('skl2onnx').get('skl2onnx', '?')} from a {type(estimator).__name__}, opset "
                 f"{OPSET} ({time.perf_counter() - started:.1f} s)")
        return Converted(out, route, Estimator(estimator), versions("scikit-learn", "skl2onnx", "skops"))


FRAMEWORK = ScikitLearn()
