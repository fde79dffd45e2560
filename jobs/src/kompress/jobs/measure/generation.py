"""Measuring a causal language model the way the field does, on the same token ids for every runtime:
- quality against a reference: the source model's next-token log-probabilities on the evaluation windows
  (PyTorch, float32, computed once and kept on disk as float16), giving each variant's perplexity, the KL
  divergence of its next-token distributions from the reference (mean and p99, as llama.cpp's perplexity tool
  reports) and top-1 agreement. The same comparison checks every runtime's float export against the source.
- speed as served: greedy generation at batch 1 from prompts of the evaluation text, the variant interleaved
  with its runtime's float model round by round: time to first token, decode tokens/s, energy per token,
  and how long each greedy continuation agrees with the float model's;
- peak resident memory while generating, in a child process (`measure/genprobe.py`)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kompress.jobs.errors import RuntimeFailure
from kompress.jobs.measure import confidence
from kompress.jobs.measure.confidence import Figure, mean_of
from kompress.jobs.measure.energy import Meter, Stopwatch
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import Energy, GenerationSpeed, LanguageQuality, Latency, SliceQuality
from kompress.jobs.runtimes.generative import Generation, GenerativeSession

EXPORT_KL_LIMIT = 1e-3
"""Largest mean KL (nats) a float export may show against the source: a float export computes the same
function, so anything above float32 rounding is a different model (e.g. a misread rope_theta)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(-1, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # type: ignore[no-any-return]


@dataclass
class Reference:
    """The source model's next-token log-probabilities on the evaluation windows."""

    windows: list[np.ndarray]
    logprobs: np.ndarray
    """float16 memmap [windows, sequenceLength - 1, vocab]: the prediction for each next token."""
    perplexity: float

    @property
    def tokens(self) -> int:
        return int(self.logprobs.shape[0] * self.logprobs.shape[1])


def _nll(logp: np.ndarray, window: np.ndarray) -> np.ndarray:
    return -logp[np.arange(len(window) - 1), window[1:]]


def build_references(hf_dir: Path, sets: dict[str, list[np.ndarray]], work: Path,
                     progress: Progress) -> dict[str, Reference]:
    """Run the source model (float32, PyTorch), loaded once, over each named set of windows (the evaluation
    text and every slice); the model is freed before returning."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    vocab = int(model.config.get_text_config().vocab_size)
    out = {}
    for name, windows in sets.items():
        started = time.perf_counter()
        length = len(windows[0]) - 1
        (work / name).mkdir(parents=True, exist_ok=True)
        store = np.lib.format.open_memmap(work / name / "reference-logprobs.npy", mode="w+", dtype=np.float16,
                                          shape=(len(windows), length, vocab))
        nll = []
        with torch.no_grad():
            for i, w in enumerate(windows):
                logits = model(torch.from_numpy(w[None])).logits[0, :-1].float().numpy()
                logp = log_softmax(logits[:, :vocab])
                store[i] = logp
                nll.append(_nll(logp, w))
        store.flush()
        ppl = float(np.exp(np.concatenate(nll).mean()))
        progress.info(f"reference ({name}): the source model's perplexity {ppl:.3f} on {len(windows)} windows x "
                      f"{length + 1} tokens ({time.perf_counter() - started:.0f} s)")
        out[name] = Reference(windows, store, ppl)
    del model
    return out


@dataclass
class Compared:
    """A session's quality on the evaluation windows, and per window (the bootstrap's unit: tokens within a
    window are not independent) its mean negative log-likelihood, KL divergence and top-1 agreement."""

    quality: LanguageQuality
    window_nll: np.ndarray
    window_kl: np.ndarray
    window_agreement: np.ndarray


def compare(session: GenerativeSession, reference: Reference, progress: Progress | None = None,
            label: str = "") -> Compared:
    """Perplexity of the session's model, and its KL divergence and top-1 agreement against the reference."""
    nll, kl, agree = [], [], []
    bar = progress.bar(len(reference.windows), f"quality {label}".strip(), "window") if progress else None
    for i, w in enumerate(reference.windows):
        vocab = reference.logprobs.shape[-1]
        logp = log_softmax(session.logits(w)[:-1, :vocab].astype(np.float32))
        ref = reference.logprobs[i].astype(np.float32)
        nll.append(_nll(logp, w))
        kl.append(np.maximum((np.exp(ref) * (ref - logp)).sum(-1), 0.0))
        agree.append(ref.argmax(-1) == logp.argmax(-1))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    kl_all = np.concatenate(kl)
    quality = LanguageQuality(perplexity=float(np.exp(np.concatenate(nll).mean())),
                              evaluation_tokens=reference.tokens, kl_divergence_mean=float(kl_all.mean()),
                              kl_divergence_p99=float(np.percentile(kl_all, 99)),
                              token_agreement=float(np.concatenate(agree).mean()))
    return Compared(quality, np.array([x.mean() for x in nll]), np.array([x.mean() for x in kl]),
                    np.array([x.mean() for x in agree]))


def judge(name: str, candidate: Compared, baseline: Compared, level: float) -> SliceQuality:
    """A variant's quality on one set of windows against its runtime's float model on the same windows: the
    perplexity increase, KL divergence and top-1 agreement, with paired bootstrap intervals over windows (all of
    one length, so the mean of window means is the mean over tokens)."""
    figures = [Figure("perplexity_increase", np.stack([candidate.window_nll, baseline.window_nll], axis=1),
                      lambda m: np.exp(m[..., 0] - m[..., 1]) - 1.0),
               mean_of("kl_divergence", candidate.window_kl), mean_of("token_agreement", candidate.window_agreement)]
    est = confidence.estimate(figures, level)
    values, intervals = confidence.report_form(est)
    if "perplexityIncrease" in intervals:  # the drop of a language model is its perplexity increase
        intervals["accuracyDrop"] = intervals["perplexityIncrease"]
    return SliceQuality(name=name, samples=len(candidate.window_nll), quality_metric="perplexityIncrease",
                        accuracy_drop=values["perplexity_increase"], **values, intervals=intervals)


class ExportMismatch(RuntimeFailure):
    """A float export that does not compute what the source computes: the run fails (nothing on that exporter
    can be trusted), whichever trial found it."""


def check_export(quality: LanguageQuality, runtime: str) -> None:
    """A float export must compute what the source computes; a mismatch fails the run naming the exporter."""
    kl = quality.kl_divergence_mean or 0.0
    if kl > EXPORT_KL_LIMIT:
        raise ExportMismatch(f"{runtime}'s float export is not the source model: mean KL {kl:.3g} nats against "
                             f"PyTorch on the same tokens (limit {EXPORT_KL_LIMIT:g}; top-1 agreement "
                             f"{quality.token_agreement:.3f}); nothing was quantized")


@dataclass
class Timed:
    """One variant's generations over the rounds."""

    generations: list[Generation] = field(default_factory=list)
    joules: float = 0.0
    energy_method: str = ""

    def speed(self, prompt_tokens: int, new_tokens: int) -> GenerationSpeed:
        tokens = sum(len(g.tokens) for g in self.generations)
        return GenerationSpeed(
            time_to_first_token_seconds=statistics.median(g.first_token_seconds for g in self.generations),
            decode_tokens_per_second=statistics.median(g.decode_tokens_per_second for g in self.generations),
            prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=len(self.generations),
            energy_per_token_joules=self.joules / tokens if tokens else None)

    def latency(self) -> Latency:
        per_token = np.array([s for g in self.generations for s in g.decode_seconds])
        return Latency(p50=float(np.percentile(per_token, 50)), p95=float(np.percentile(per_token, 95)),
                       p99=float(np.percentile(per_token, 99)), mean=float(per_token.mean()), samples=len(per_token),
                       batch_size=1, method="per decoded token, greedy, rounds interleaved with the float model")

    def energy(self) -> Energy | None:
        tokens = sum(len(g.tokens) for g in self.generations)
        if not tokens:
            return None
        return Energy(joules_per_inference=self.joules / tokens, method=self.energy_method, inferences=tokens,
                      measured_over="whole generations (prompt and decode) per generated token")


def time_pair(baseline: GenerativeSession, candidate: GenerativeSession, prompts: list[np.ndarray],
              new_tokens: int, meter: Meter) -> tuple[Timed, Timed, float]:
    """Interleaved greedy generations (the order flips each round, so drift hits both); returns both variants'
    timings and the measurement's noise: half the interquartile range of the per-round decode ratios."""
    # warm-up at full prompt length: a fresh session's first generations grow its buffers
    for s in (baseline, candidate):
        s.generate(prompts[0], min(new_tokens, 16))
    timed = (Timed(energy_method=meter.method), Timed(energy_method=meter.method))
    for r, prompt in enumerate(prompts):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            session = (baseline, candidate)[which]
            with Stopwatch(meter) as watch:
                gen = session.generate(prompt, new_tokens)
            timed[which].generations.append(gen)
            timed[which].joules += watch.joules
    ratios = [c.decode_tokens_per_second / b.decode_tokens_per_second
              for b, c in zip(timed[0].generations, timed[1].generations, strict=True)
              if b.decode_tokens_per_second > 0]
    spread = 0.0
    if len(ratios) >= 4:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        spread = (q3 - q1) / 2
    elif len(ratios) > 1:
        spread = (max(ratios) - min(ratios)) / 2
    return timed[0], timed[1], spread


def continuation_agreement(baseline: Timed, candidate: Timed) -> float:
    """Mean share of each greedy continuation generated before the first token that differs from the float
    model's continuation of the same prompt."""
    shares = []
    for b, c in zip(baseline.generations, candidate.generations, strict=True):
        same = 0
        for x, y in zip(b.tokens, c.tokens, strict=False):
            if x != y:
                break
            same += 1
        shares.append(same / max(len(b.tokens), 1))
    return float(np.mean(shares)) if shares else 0.0


def peak_memory(runtime: str, model_dir: Path, threads: int, precision: str | None, prompt: np.ndarray,
                new_tokens: int, work: Path) -> int | None:
    """Resident-set growth while loading the model and generating, in a fresh process (None if it failed)."""
    prompt_file = work / "genprobe-prompt.npy"
    np.save(prompt_file, prompt)
    cmd = [sys.executable, "-m", "kompress.jobs.measure.genprobe", runtime, str(model_dir), str(threads),
           precision or "-", str(prompt_file), str(new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"kompress: peak-memory probe failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peakBytes"])
