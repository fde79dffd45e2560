"""The one training loop every training technique uses (recovery fine-tuning, distillation, QAT).

Deterministic (seeded shuffles, fixed order), resumable (a checkpoint every epoch and every
``checkpoint_seconds``; a restarted Job continues at the saved epoch and batch), with periodic progress lines.
Losses for distillation live here too, so techniques share one definition of "match the teacher"."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.progress import Progress
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.techniques.configs import TrainingConfig

Batch = dict[str, np.ndarray]


@dataclass
class FitResult:
    epochs: int
    steps: int
    loss_history: list[float]
    resumed_from: dict[str, int] | None
    seconds: float

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs, "optimizerSteps": self.steps,
                               "lossPerEpoch": [round(v, 6) for v in self.loss_history],
                               "trainingSeconds": round(self.seconds, 1)}
        if self.resumed_from:
            out["resumedFrom"] = self.resumed_from
        return out


def take(data: Batch, index: np.ndarray) -> Batch:
    return {k: v[index] for k, v in data.items()}


def _linear_warmup_decay(peak: float, total_steps: int) -> Callable[[int], float]:
    """Learning rate per step: linear warm-up over the first 5% of steps, then linear decay to zero."""
    warmup = max(1, total_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return lr_at


def _step(optimizer: Any, params: list[Any], loss_fn: Callable[[Batch], Any], batch: Batch, lr: float) -> float:
    """One optimizer step on one batch (gradients clipped at norm 1); the batch's mean loss."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return float(loss.detach())


def fit(parameters_of: Any, loss_fn: Callable[[Batch], Any], data: Batch, config: TrainingConfig, *,
        seed: int, checkpoints: Checkpoints, progress: Progress | None, label: str,
        checkpoint_seconds: float = 120.0) -> FitResult:
    """Minimise ``loss_fn(batch)`` over ``data`` (a dict of aligned arrays, labels included when present).

    ``parameters_of`` is the torch module being trained: its parameters are optimized and its state is what
    the checkpoints hold."""
    import torch

    module = parameters_of
    n = len(next(iter(data.values())))
    if config.max_samples:
        n = min(n, config.max_samples)
    batches_per_epoch = max(1, -(-n // config.batch_size))
    total_steps = max(1, batches_per_epoch * config.epochs)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_at = _linear_warmup_decay(config.learning_rate, total_steps)
    start_epoch, start_batch, history = 0, 0, []
    resumed = None
    state = checkpoints.load_training("train", module, optimizer)
    if state is not None:
        start_epoch, start_batch, history = state["epoch"], state["batch"], list(state["lossHistory"])
        resumed = {"epoch": start_epoch, "batch": start_batch}
        if progress:
            progress.info(f"{label}: resuming from checkpoint at epoch {start_epoch + 1}, batch {start_batch}")
    started = time.perf_counter()
    last_save = time.perf_counter()
    step = start_epoch * batches_per_epoch + start_batch
    module.train()
    for epoch in range(start_epoch, config.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        running = float(state["runningLoss"]) if (state and epoch == start_epoch and start_batch) else 0.0
        first = start_batch if epoch == start_epoch else 0
        for b in range(first, batches_per_epoch):
            torch.manual_seed(seed * 1_000_003 + step)  # dropout masks etc. reproducible after a resume
            index = np.sort(order[b * config.batch_size:(b + 1) * config.batch_size])
            running += _step(optimizer, params, loss_fn, take(data, index), lr_at(step)) * len(index)
            step += 1
            if time.perf_counter() - last_save > checkpoint_seconds and b + 1 < batches_per_epoch:
                checkpoints.save_training("train", module, optimizer, {
                    "epoch": epoch, "batch": b + 1, "lossHistory": history, "runningLoss": running})
                last_save = time.perf_counter()
                if progress:
                    progress.info(f"{label}: epoch {epoch + 1}/{config.epochs} batch {b + 1}/{batches_per_epoch} "
                                  f"loss {running / min(n, (b + 1) * config.batch_size):.5f} (checkpoint saved)")
        history.append(running / n)
        checkpoints.save_training("train", module, optimizer, {
            "epoch": epoch + 1, "batch": 0, "lossHistory": history, "runningLoss": 0.0})
        last_save = time.perf_counter()
        if progress:
            progress.info(f"{label}: epoch {epoch + 1}/{config.epochs} done, loss {history[-1]:.5f}")
    module.eval()
    return FitResult(config.epochs, step, history, resumed, time.perf_counter() - started)


def distillation_loss(student_out: Any, teacher_out: Any, task: str, temperature: float,
                      labels: Any = None, label_weight: float = 0.5) -> Any:
    """Match the teacher: soft targets with temperature for classifiers (plus cross-entropy on labels when
    present); mean squared error plus cosine distance for embeddings and other real-valued outputs."""
    import torch.nn.functional as F

    if tasks.get(task).logits or (labels is not None and student_out.ndim == 2):
        t = temperature
        soft = F.kl_div(F.log_softmax(student_out / t, dim=-1), F.softmax(teacher_out / t, dim=-1),
                        reduction="batchmean") * t * t
        if labels is None:
            return soft
        hard = F.cross_entropy(student_out, labels)
        return (1 - label_weight) * soft + label_weight * hard
    s = student_out.reshape(len(student_out), -1)
    te = teacher_out.reshape(len(teacher_out), -1)
    cosine = 1 - F.cosine_similarity(s, te, dim=1).mean()
    scale = te.pow(2).mean().clamp(min=1e-12)
    return F.mse_loss(s, te) / scale + cosine
