"""Train the small digits CNN used by the examples and tests, and export it to ONNX.

scikit-learn's digits (1,797 8x8 images shipped inside the package) are split 80/20 with a fixed seed;
the CNN trains on the 80% in a few seconds on a CPU, and the 20% becomes the labelled evaluation set.

Run: python scripts/train_digits_cnn.py [--out-dir jobs/src/kompress/jobs/datasets] [--train-data-only]
Writes digits-cnn.onnx (input `pixels` [N,1,8,8] float32, output `logits` [N,10]), digits-eval.npz
(`pixels`, `labels`) and digits-train.npz (the 80% the CNN trained on, for techniques that train:
`data.trainUri`), and prints the held-out accuracy. `--train-data-only` writes digits-train.npz alone,
without retraining: the split is deterministic, so the shipped model and evaluation file stay as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets"
SEED = 0


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def build_model():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def train(epochs: int = 12) -> tuple[object, float, np.ndarray, np.ndarray]:
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test = load_split()
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}/{epochs} loss {total / len(xt):.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return model, acc, x_test, y_test


def write_train_data(out_dir: Path) -> Path:
    """The training split as an .npz (float32 pixels, int64 labels), like digits-eval.npz."""
    x_train, y_train, _, _ = load_split()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits-train.npz"
    np.savez_compressed(path, pixels=x_train, labels=y_train)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=DATASETS)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-data-only", action="store_true",
                        help="only write digits-train.npz (no training; the shipped model is left alone)")
    args = parser.parse_args()
    train_path = write_train_data(args.out_dir)
    if args.train_data_only:
        print(json.dumps({"trainData": str(train_path)}))
        return
    import torch

    model, acc, x_test, y_test = train(args.epochs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "digits-cnn.onnx"
    torch.onnx.export(model, (torch.from_numpy(x_test[:2]),), str(onnx_path), input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    np.savez_compressed(args.out_dir / "digits-eval.npz", pixels=x_test, labels=y_test)
    print(json.dumps({"model": str(onnx_path), "trainData": str(train_path), "heldOutAccuracy": acc,
                      "evalSamples": len(y_test)}))


if __name__ == "__main__":
    main()
