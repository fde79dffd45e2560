"""The registered generative runtimes (text-generation's `target.runtime`): the built-ins below, one entry per
module; a plugin (or a test) registers its own with `register`. Nothing outside `runtimes/` compares a
generative runtime's name."""

from __future__ import annotations

from kompress.jobs.plugins import Registry
from kompress.jobs.runtimes import openvino_genai, ortgenai
from kompress.jobs.runtimes.generative import GenerativeRuntime

_GENERATIVE: Registry[GenerativeRuntime] = Registry("generative runtime", "target.runtime", (ortgenai.RUNTIME,
                                                                                     openvino_genai.RUNTIME))
register, unregister, names, get, all_runtimes = (_GENERATIVE.register, _GENERATIVE.unregister, _GENERATIVE.names,
                                                  _GENERATIVE.get, _GENERATIVE.all)


def installed() -> list[GenerativeRuntime]:
    return [r for r in all_runtimes() if r.installed()]


def default() -> GenerativeRuntime:
    """What a fixed text-generation pipeline runs on when target.runtime is unset: the first built-in."""
    return all_runtimes()[0]
