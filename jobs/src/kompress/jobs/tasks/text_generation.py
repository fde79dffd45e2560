"""text-generation: a causal language model, judged by perplexity on held-out text and by its agreement with
the float model (KL divergence of the next-token distributions, top-1 token agreement), timed by time to
first token and decode tokens/s. Measured by `measure/generation.py`, not by comparing output tensors."""

from __future__ import annotations

from kompress.jobs.report.model import VariantMetrics
from kompress.jobs.tasks.base import Task


class TextGeneration(Task):
    name = "text-generation"
    summary = "a causal language model judged by perplexity, KL divergence and token agreement"
    generative = True
    logits = True
    top1_agreement = True
    gates = frozenset({"maxPerplexityIncrease", "maxKLDivergence", "minTokenAgreement"})

    def quality_drop(self, baseline: VariantMetrics, optimized: VariantMetrics) -> tuple[str, float]:
        """The relative perplexity increase over the float model (measured on the same token ids)."""
        if baseline.language is None or optimized.language is None:
            return "perplexityIncrease", 0.0
        return "perplexityIncrease", optimized.language.perplexity / baseline.language.perplexity - 1.0


TASK = TextGeneration()
