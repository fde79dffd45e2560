"""SkipLayerNormalization, fused or split, chosen by measuring both on the target.

ONNX Runtime's transformer optimizer fuses each residual add and layer norm into one contrib op,
SkipLayerNormalization. Its CPU kernel (onnxruntime 1.32) is a scalar loop: measured here at 288 us for
128 x 384 floats on one core, where Add + LayerNormalization take 64 us. In an INT8 MiniLM that is 12 ops and
about a fifth of the run. Splitting the op back gives the fast kernels; the residual sum is written as `Sum`,
not `Add`, because the runtime's own SkipLayerNormFusion would otherwise fuse Add + LayerNormalization again
when the session loads. A future runtime may fix the kernel, so `auto` times both forms at the model's
hidden size on the machine that runs the step and keeps the faster one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from kompress.jobs.runtimes.onnxruntime import session_options

SPLIT_MIN_GAIN = 1.1
"""auto splits only when the split form is at least this much faster (a tie keeps the runtime's fusion)."""
_ROWS = 128
"""Rows timed per call: one sequence of 128 tokens, the shape that batch-1 latency runs."""


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def splittable(model: Any) -> list[int]:
    """Positions of the SkipLayerNormalization nodes that can be split: the model imports ONNX opset 17 or
    later (the first with LayerNormalization) and nothing reads the node's mean / inverse-variance outputs.
    (Positions, not node objects: protobuf hands out a fresh wrapper on every access.)"""
    if _opset(model) < 17:
        return []
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return [i for i, n in enumerate(model.graph.node)
            if n.op_type == "SkipLayerNormalization" and n.domain == "com.microsoft"
            and not any(name in read for name in list(n.output)[1:3] if name)]


def hidden_size(model: Any, node: Any) -> int:
    """The normalized width: the length of the node's gamma initializer (0 when gamma is computed)."""
    gamma = node.input[2]
    for init in model.graph.initializer:
        if init.name == gamma:
            return int(init.dims[-1])
    return 0


def split(model: Any, positions: list[int] | None = None) -> int:
    """Rewrite the SkipLayerNormalization nodes at `positions` (default: every splittable one) as
    Sum(input, skip[, bias]) -> LayerNormalization, in place. Returns how many were split. Output 3 (the
    residual sum, read by pre-norm models) keeps its name as the Sum's output."""
    from onnx import NodeProto, helper

    targets = set(splittable(model) if positions is None else positions)
    if not targets:
        return 0
    nodes = []
    for i, node in enumerate(model.graph.node):
        if i not in targets:
            kept = NodeProto()
            kept.CopyFrom(node)  # a copy: the graph's node list is cleared below
            nodes.append(kept)
            continue
        inputs = [*node.input, "", "", ""][:5]
        x, skip, gamma, beta, bias = inputs
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        outputs = list(node.output)
        total = outputs[3] if len(outputs) > 3 and outputs[3] else f"{node.name or node.output[0]}_residual_sum"
        nodes.append(helper.make_node("Sum", [x, skip] + ([bias] if bias else []), [total],
                                      name=f"{node.name}_sum"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []),
                                      [outputs[0]], name=f"{node.name}_norm", axis=-1, epsilon=eps))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(targets)


def time_forms(hidden: int, threads: int, calls: int = 60) -> dict[str, float]:
    """Median microseconds per call of the fused op and of its split form, at `hidden` width, timed
    alternately in this process with the evaluation's thread count."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x, skip = (rng.standard_normal((1, _ROWS, hidden)).astype(np.float32) for _ in range(2))
    consts = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n)
              for n in ("gamma", "beta", "bias")]
    forms = {
        "fused": [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                                   domain="com.microsoft", epsilon=1e-12)],
        "split": [helper.make_node("Sum", ["x", "skip", "bias"], ["s"]),
                  helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)],
    }
    options = session_options(threads)  # the evaluation's own timing setup
    sessions = {}
    for name, body in forms.items():
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, _ROWS, hidden]) for n in ("x", "skip")]
        graph = helper.make_graph(body, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  consts)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        sessions[name] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"x": x, "skip": skip}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(5):
        for sess in sessions.values():
            sess.run(None, feeds)
    for _ in range(calls):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: round(float(np.median(t)) * 1e6, 1) for name, t in times.items()}
