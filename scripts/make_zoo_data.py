"""Build the model zoo: third-party ONNX models taken from PyPI wheels (no hub download at run time) plus one
evaluation .npz per model, with inputs made locally the way each model's own library prepares them.

Models (the wheels are cached; only their .onnx files are extracted, nothing is pip-installed):
  ppocr-det   rapidocr 3.10.0 (Apache-2.0)  PP-OCRv6_det_small.onnx           text detector (DB)
  ppocr-rec   rapidocr 3.10.0               PP-OCRv6_rec_small.onnx           text-line recognizer (CTC)
  ppocr-cls   rapidocr 3.10.0               ch_ppocr_mobile_v2.0_cls_mobile   text direction, 0 or 180 degrees
  silero-vad  silero-vad 6.2.3 (MIT)        silero_vad.onnx                   voice activity, 16 kHz

Data (deterministic: fixed seeds, the machine's fonts and espeak-ng voices):
  ppocr-cls.npz   `x` [N,3,48,192] float32 rendered text-line crops, half of them rotated 180 degrees;
                  `labels` int64, 0 upright / 1 rotated (the model's class order, checked here).
  ppocr-rec.npz   `x` [N,3,48,320] float32 rendered text lines padded to 320 as rapidocr pads; no labels.
  ppocr-det.npz   `x` [N,3,736,736] float32 rendered documents (736 is what rapidocr's det resize makes of
                  any page whose short side is under 736); no labels.
  silero-vad.npz  `input` [N,576] float32: 64 samples of context (the previous audio, as silero's OnnxWrapper
                  prepends) + one 512-sample chunk at 16 kHz. Rows: espeak-ng speech, then silence, then
                  white/pink noise. The model's other inputs are the same for every row and are described in
                  silero-vad.constants.json: sr = 16000 (int64 scalar) and a zero state [2, batch, 128]
                  (batch on axis 1).

Run: python scripts/make_zoo_data.py [--out DIR] [--cache DIR]
Needs: pip (download only), onnxruntime, numpy, Pillow, TrueType fonts (fc-list), espeak-ng and sox.
Prints progress on stderr and one JSON line on stdout: paths, sample counts and sanity figures.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SEED = 20240611


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    members: dict[str, str]  # zoo model name -> path inside the wheel


WHEELS = [
    Wheel("rapidocr", "3.10.0", {
        "ppocr-det": "rapidocr/models/PP-OCRv6_det_small.onnx",
        "ppocr-rec": "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "ppocr-cls": "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    }),
    Wheel("silero-vad", "6.2.3", {"silero-vad": "silero_vad/data/silero_vad.onnx"}),
]

# rapidocr 3.10.0 config.yaml / ch_ppocr_*: shapes and normalisation reproduced below
CLS_SHAPE = (3, 48, 192)  # Cls.ocr_version PP-OCRv4 -> CLS_SHAPE_BY_OCR_VERSION
REC_HEIGHT, REC_WIDTH = 48, 320  # Rec.rec_img_shape [3, 48, 320]
DET_LIMIT_SIDE, DET_SIZE = 736, 736  # Det.limit_side_len 736, limit_type min
REC_CHECKED = 128  # lines decoded for the sanity check
SILERO_SR, SILERO_CHUNK, SILERO_CONTEXT = 16000, 512, 64  # silero_vad.utils_vad.OnnxWrapper

_WORD_TEXT = (
    "the of and to in is for on that with as by at from this be are or an it was have not but all can more "
    "new time page total invoice date order number account customer service price amount payment due "
    "address street city road north south east west phone email office report summary table figure section "
    "chapter contents index note warning caution open close start stop exit entry push pull only staff "
    "receipt cash card change tax subtotal discount item quantity unit weight height width model serial "
    "version release update system network server client file folder window screen button menu help "
    "monday tuesday friday january march july october morning evening hotel station airport platform "
    "gate ticket coffee bread milk water apple orange lemon sugar salt butter cheese pizza pasta salad "
    "quick brown fox jumps over lazy dog green yellow purple silver golden river mountain garden library "
    "museum school hospital pharmacy market bakery parking elevator stairs floor room level zone "
    "Berlin Paris London Madrid Oslo Vienna Prague Lisbon Dublin Zurich Kyoto Austin Denver Boston"
)
WORDS = tuple(_WORD_TEXT.split())
PUNCT = (".", ",", ":", ";", "!", "?", "-", "/", "(", ")")

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please keep your ticket until the end of the journey.",
    "The next train to the airport leaves from platform four.",
    "Turn left at the second traffic light and park behind the library.",
    "Our meeting has been moved to Thursday afternoon at three o'clock.",
    "She sells sea shells by the sea shore every summer morning.",
    "Remember to back up your files before installing the update.",
    "The museum is open every day except Monday from nine to five.",
    "A cup of coffee and a slice of apple cake, please.",
    "Heavy rain is expected in the northern mountains tonight.",
    "Can you hear me clearly, or should I call you back later?",
    "Seven hundred and twenty people attended the concert on Saturday.",
    "The recipe needs two eggs, a spoon of sugar and some butter.",
    "Warning: the floor is wet near the main entrance.",
    "Thank you for calling, all of our agents are busy right now.",
    "The children built a tall sand castle next to the water.",
    "Open the window, it is getting very warm in this room.",
    "The invoice total is four hundred and sixty two euros.",
    "Mount Everest is the highest mountain above sea level.",
    "Please speak slowly and clearly after the tone.",
    "We will land in Lisbon in approximately twenty minutes.",
    "The old bridge was rebuilt after the flood of nineteen ninety.",
    "Keep calm and carry on working until the bell rings.",
    "Good evening, and welcome to the nightly news.",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan")


def log(message: str) -> None:
    """Progress on stderr, so stdout stays one machine-readable JSON line."""
    print(f"[zoo] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- models
def cache_root() -> Path:
    """The project's cache ($KOMPRESS_CACHE, default ~/.cache/kompress), where CI keeps its downloads."""
    root = os.environ.get("KOMPRESS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "kompress"


def default_cache() -> Path:
    """Wheels are large (27 MB + 11 MB): keep them across runs, in the project's cache like other downloads."""
    return cache_root() / "zoo"


def default_data() -> Path:
    """Where the built zoo (models/ and the .npz files) lives by default, shared by bench/zoo.py and the CI
    tier tests/test_zoo.py."""
    return cache_root() / "zoo-data"


def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
    """The wheel file from the cache, downloaded with pip (no dependencies, nothing installed) when missing."""
    stem = f"{wheel.package.replace('-', '_')}-{wheel.version}-"
    found = sorted(cache.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    log(f"downloading {wheel.package}=={wheel.version} into {cache}")
    subprocess.run([sys.executable, "-m", "pip", "download", f"{wheel.package}=={wheel.version}", "--no-deps",
                    "--only-binary=:all:", "-q", "-d", str(cache)], check=True, stdout=sys.stderr)
    found = sorted(cache.glob(f"{stem}*.whl"))
    if not found:
        raise SystemExit(f"pip download left no {stem}*.whl in {cache}")
    return found[0]


def extract_models(cache: Path, models_dir: Path) -> dict[str, Path]:
    """Only the .onnx files leave the wheels: the libraries' own code (and their heavy deps) is not needed."""
    models_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for wheel in WHEELS:
        whl = fetch_wheel(wheel, cache)
        with zipfile.ZipFile(whl) as zf:
            for name, member in wheel.members.items():
                target = models_dir / f"{name}.onnx"
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                paths[name] = target
    log("models: " + ", ".join(f"{k} {v.stat().st_size / 1e6:.1f} MB" for k, v in paths.items()))
    return paths


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed member timestamps, so the report's input
    sha256 stays the same across rebuilds) and at zlib level 1 (the pages' float32 pixels take 4x longer to
    write at the default level for a file only ~15% smaller). np.load reads it like any .npz."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)


def session(path: Path) -> Any:
    """A 2-thread CPU session for the sanity checks (the benchmark machine has 2 cores; no GPU needed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The first output over all rows, in batches so the detector's 736x736 maps stay small in memory."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------------------------- images
def font_files() -> list[str]:
    """TrueType fonts that cover English (fc-list), sorted so the same machine renders the same data."""
    try:
        out = subprocess.run(["fc-list", ":lang=en", "--format", "%{file}\n"], capture_output=True, text=True,
                             check=True).stdout
        files = sorted({f for f in out.splitlines() if f.lower().endswith((".ttf", ".otf"))})
    except (OSError, subprocess.CalledProcessError):
        files = sorted(str(p) for p in Path("/usr/share/fonts").rglob("*.ttf"))
    files = [f for f in files if "math" not in f.lower()]  # math fonts draw letters as symbols
    if not files:
        raise SystemExit("no TrueType fonts found (install fonts-dejavu-core)")
    return files


def resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height)) with INTER_LINEAR, which rapidocr uses and this machine lacks: half-pixel
    centres, edge clamping, no antialiasing (so it differs from Pillow's BILINEAR when shrinking); rounded to
    uint8 (cv2's 11-bit fixed point can differ by one level)."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        frac[lo < 0] = 0.0
        lo = np.clip(lo, 0, n_in - 1)
        frac[lo >= n_in - 1] = 0.0
        return lo, np.minimum(lo + 1, n_in - 1), frac.astype(np.float32)

    y0, y1, fy = axis(height, img.shape[0])
    x0, x1, fx = axis(width, img.shape[1])
    src = img.astype(np.float32)
    rows = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalize_chw(img: np.ndarray) -> np.ndarray:
    """rapidocr's normalisation for all three models: BGR uint8 HWC -> CHW, /255, (x - 0.5) / 0.5."""
    return (img.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5


def resize_norm_pad(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr TextClassifier/TextRecognizer.resize_norm_img: height fixed, width ceil(height * aspect) capped
    at `width` (longer lines are squeezed), normalised, then zero-padded on the right (0 = mid grey)."""
    h, w = img.shape[:2]
    resized_w = min(width, math.ceil(height * w / h))
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = normalize_chw(resize_linear(img, resized_w, height))
    return out


def phrase(rng: np.random.Generator, words: int) -> str:
    """A line like those on signs, receipts and forms: words with capitals, numbers, prices and punctuation."""
    parts: list[str] = []
    for _ in range(words):
        kind = rng.random()
        if kind < 0.72:
            word = str(rng.choice(WORDS))
            style = rng.random()
            word = word.upper() if style < 0.12 else word.capitalize() if style < 0.35 else word
        elif kind < 0.84:
            word = str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
        elif kind < 0.92:
            word = f"{rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
        else:
            word = f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}"
        if rng.random() < 0.15:
            word += str(rng.choice(PUNCT[:6]))
        parts.append(word)
    return " ".join(parts)


def ink_and_paper(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Dark ink on light paper (white to grey, slightly tinted), with varied contrast."""
    base, ink_base = int(rng.integers(195, 256)), int(rng.integers(0, 80))
    paper = tuple(int(np.clip(base + t, 0, 255)) for t in rng.integers(-12, 13, 3))
    ink = tuple(int(np.clip(ink_base + t, 0, 255)) for t in rng.integers(-20, 40, 3))
    return ink, paper  # type: ignore[return-value]


def degrade(rng: np.random.Generator, image: Image.Image) -> np.ndarray:
    """A little of what real crops have: blur, lowered contrast, sensor noise. Returns BGR uint8 (rapidocr reads
    images with OpenCV, so its models see BGR)."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.1))))
    arr = np.asarray(image, dtype=np.float32)
    contrast = rng.uniform(0.65, 1.0)
    arr = (arr - arr.mean()) * contrast + arr.mean()
    arr += rng.normal(0.0, rng.uniform(0.0, 7.0), arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)[:, :, ::-1].copy()


def render_line(rng: np.random.Generator, text: str, fonts: list[str], size: int) -> np.ndarray:
    """A text-line crop as the detector's box would cut it: the text plus a margin, BGR uint8."""
    font = ImageFont.truetype(str(rng.choice(fonts)), size)
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(size * rng.uniform(0.15, 0.6)), int(size * rng.uniform(0.1, 0.35))
    ink, paper = ink_and_paper(rng)
    image = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), paper)
    ImageDraw.Draw(image).text((mx - left, my - top), text, font=font, fill=ink)
    return degrade(rng, image)


# --------------------------------------------------------------------------------------------- ppocr-cls
def build_cls(model: Path, out: Path, fonts: list[str], count: int) -> dict[str, Any]:
    """Upright and 180-degree-rotated crops (alternating), labelled, checked against the model."""
    rng = np.random.default_rng(SEED + 1)
    xs, labels = [], []
    for i in range(count):
        line = render_line(rng, phrase(rng, int(rng.integers(1, 6))), fonts, int(rng.integers(18, 46)))
        rotated = i % 2
        if rotated:
            line = line[::-1, ::-1]  # cv2.ROTATE_180
        xs.append(resize_norm_pad(line, CLS_SHAPE[1], CLS_SHAPE[2]))
        labels.append(rotated)
    x, y = np.stack(xs), np.array(labels, dtype=np.int64)
    pred = run_batched(session(model), x).argmax(1)
    accuracy = float((pred == y).mean())
    save_npz(out, x=x, labels=y)
    log(f"ppocr-cls: {count} crops, model accuracy {accuracy:.4f} (class 0 = upright, 1 = 180 degrees)")
    if accuracy < 0.8:
        raise SystemExit(f"ppocr-cls accuracy {accuracy:.3f} is too low: the preprocessing is wrong")
    return {"path": str(out), "samples": count, "shape": list(x.shape), "accuracy": round(accuracy, 4)}


# --------------------------------------------------------------------------------------------- ppocr-rec
def fitting_line(rng: np.random.Generator, fonts: list[str]) -> tuple[str, np.ndarray]:
    """A rendered line whose aspect ratio fits 320x48, so rapidocr would pad it rather than squeeze it."""
    words = int(rng.integers(1, 7))
    size = int(rng.integers(18, 46))
    while True:
        text = phrase(rng, words)
        line = render_line(rng, text, fonts, size)
        if line.shape[1] / line.shape[0] <= REC_WIDTH / REC_HEIGHT or words == 1:
            return text, line
        words -= 1


def ctc_greedy(logits: np.ndarray, charset: list[str]) -> list[str]:
    """rapidocr's CTCLabelDecode: argmax, collapse repeats, drop blank (index 0)."""
    out = []
    for ids in logits.argmax(2):
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        out.append("".join(charset[i] for i in ids[keep & (ids != 0)]))
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, for character accuracy."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def build_rec(model: Path, out: Path, fonts: list[str], count: int) -> dict[str, Any]:
    """Rendered lines padded to 320; checked by decoding with the dictionary in the model's metadata."""
    rng = np.random.default_rng(SEED + 2)
    texts, xs = [], []
    for _ in range(count):
        text, line = fitting_line(rng, fonts)
        texts.append(text)
        xs.append(resize_norm_pad(line, REC_HEIGHT, REC_WIDTH))
    x = np.stack(xs)
    sess = session(model)
    # rapidocr: character list from metadata, then 'blank' first and ' ' last
    charset = ["blank", *sess.get_modelmeta().custom_metadata_map["character"].splitlines(), " "]
    checked = texts[:REC_CHECKED]  # 50 ms a line here: a sample is enough to catch wrong preprocessing
    decoded = ctc_greedy(run_batched(sess, x[:REC_CHECKED]), charset)
    errors = sum(edit_distance(d, t) for d, t in zip(decoded, checked, strict=True))
    char_accuracy = 1.0 - errors / sum(len(t) for t in checked)
    exact = float(np.mean([d == t for d, t in zip(decoded, checked, strict=True)]))
    save_npz(out, x=x)
    log(f"ppocr-rec: {count} lines; on {len(checked)}: char accuracy {char_accuracy:.4f}, exact lines {exact:.3f}; "
        f"e.g. {texts[0]!r} -> {decoded[0]!r}")
    if char_accuracy < 0.8:
        raise SystemExit(f"ppocr-rec char accuracy {char_accuracy:.3f} is too low: the preprocessing is wrong")
    return {"path": str(out), "samples": count, "shape": list(x.shape), "charAccuracy": round(char_accuracy, 4),
            "exactLines": round(exact, 4), "checkedLines": len(checked), "dictionarySize": len(charset)}


# --------------------------------------------------------------------------------------------- ppocr-det
def render_page(rng: np.random.Generator, fonts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A 736x736 page of text lines at random indents and spacing (some with a second field on the same line,
    some underlined), plus a mask of where the text is."""
    ink, paper = ink_and_paper(rng)
    image = Image.new("RGB", (DET_SIZE, DET_SIZE), paper)
    draw = ImageDraw.Draw(image)
    mask = np.zeros((DET_SIZE, DET_SIZE), dtype=bool)
    y = int(rng.integers(10, 80))
    while y < DET_SIZE - 50:
        size = int(rng.integers(14, 42))
        font = ImageFont.truetype(str(rng.choice(fonts)), size)
        color = ink if rng.random() < 0.8 else tuple(int(v) for v in rng.integers(0, 160, 3))
        x, bottom = int(rng.integers(10, DET_SIZE // 3)), y + size
        for _ in range(1 + int(rng.random() < 0.3)):  # sometimes a second field further right
            box = place_text(draw, (x, y), phrase(rng, int(rng.integers(1, 8))), font, color)
            if box is None:
                break
            mask[box[1]:box[3], box[0]:box[2]] = True
            x, bottom = box[2] + int(rng.integers(size, 6 * size)), max(bottom, box[3])
        if rng.random() < 0.1:
            draw.line((10, bottom + size // 3, DET_SIZE - 10, bottom + size // 3), fill=ink, width=1)
        y = bottom + int(size * rng.uniform(0.3, 1.6))
    return degrade(rng, image), mask


def place_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: ImageFont.FreeTypeFont,
               color: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """Draw the longest word prefix of `text` that fits inside the page; its box, or None when nothing fits."""
    words = text.split()
    while words:
        box = draw.textbbox(xy, " ".join(words), font=font)
        if box[2] < DET_SIZE - 8 and box[3] < DET_SIZE - 8:
            draw.text(xy, " ".join(words), font=font, fill=color)
            return box
        words.pop()
    return None


def det_preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr DetPreProcess (limit_type min, 736): scale so the short side is >= 736, round both sides to a
    multiple of 32, INTER_LINEAR, normalise with mean = std = 0.5. A 736x736 page passes through unresized."""
    h, w = img.shape[:2]
    ratio = DET_LIMIT_SIDE / min(h, w) if min(h, w) < DET_LIMIT_SIDE else 1.0
    rh, rw = round(int(h * ratio) / 32) * 32, round(int(w * ratio) / 32) * 32
    resized = img if (rh, rw) == (h, w) else resize_linear(img, rw, rh)
    return normalize_chw(resized)


def build_det(model: Path, out: Path, fonts: list[str], count: int) -> dict[str, Any]:
    """Rendered pages; checked by comparing the probability map inside and outside the text boxes."""
    rng = np.random.default_rng(SEED + 3)
    pages = [render_page(rng, fonts) for _ in range(count)]
    x = np.stack([det_preprocess(page) for page, _ in pages])
    masks = np.stack([mask for _, mask in pages])
    sample = slice(0, min(4, count))  # the detector takes ~0.4 s a page here: check a few
    prob = run_batched(session(model), x[sample], batch=2)[:, 0]
    inside, outside = float(prob[masks[sample]].mean()), float(prob[~masks[sample]].mean())
    save_npz(out, x=x)
    log(f"ppocr-det: {count} pages {list(x.shape[1:])}, text probability inside boxes {inside:.3f}, "
        f"outside {outside:.3f} (on {prob.shape[0]} pages)")
    if inside < 3 * outside:
        raise SystemExit("ppocr-det does not find the rendered text: the preprocessing is wrong")
    return {"path": str(out), "samples": count, "shape": list(x.shape), "probInsideText": round(inside, 4),
            "probOutsideText": round(outside, 4)}


# --------------------------------------------------------------------------------------------- silero-vad
def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng speech resampled by sox to 16 kHz mono float32 (what silero-vad is trained on)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SILERO_SR), "-c", "1", "-e",
                          "floating-point", "-b", "32", "-"], input=wav, capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def with_context(audio: np.ndarray, start: int) -> np.ndarray:
    """One model row: the 64 samples before the chunk (zeros at the start) followed by the 512-sample chunk."""
    padded = np.concatenate([np.zeros(SILERO_CONTEXT, np.float32), audio])
    return padded[start:start + SILERO_CONTEXT + SILERO_CHUNK]


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise by shaping white noise's spectrum, unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return (noise / noise.std()).astype(np.float32)


def speech_rows(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Voiced chunks (frame RMS within 20 dB of the utterance's loudest) from espeak-ng sentences in several
    voices, speeds and pitches, at varied gain, half with background noise; also the whole utterances."""
    rows, utterances = [], []
    for i, text in enumerate(SENTENCES):
        audio = speak(text, VOICES[i % len(VOICES)], int(rng.integers(130, 200)), int(rng.integers(25, 75)))
        audio = audio / (np.abs(audio).max() + 1e-9) * rng.uniform(0.2, 0.9)
        utterances.append(audio.astype(np.float32))
        starts = np.arange(0, len(audio) - SILERO_CHUNK, SILERO_CHUNK)
        rms = np.array([np.sqrt(np.mean(audio[s:s + SILERO_CHUNK] ** 2)) for s in starts])
        for s in starts[rms > rms.max() * 0.1]:
            rows.append(with_context(audio, int(s)))
    picked = np.stack(rows)[np.sort(rng.permutation(len(rows))[:count])]
    noisy = rng.random(len(picked)) < 0.5
    snr_gain = 10 ** (-rng.uniform(15, 30, len(picked)) / 20) * np.sqrt(np.mean(picked ** 2, axis=1))
    picked = picked + (noisy * snr_gain)[:, None] * rng.normal(size=picked.shape)
    return picked.astype(np.float32), utterances


def non_speech_rows(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Silence (digital zero and faint dither) and white/pink noise at -50..-15 dBFS."""
    n = SILERO_CONTEXT + SILERO_CHUNK
    silence = [np.zeros(n, np.float32) if i % 2 == 0 else rng.normal(0, 1e-4, n).astype(np.float32)
               for i in range(count // 2)]
    noise = []
    for i in range(count - count // 2):
        level = 10 ** (rng.uniform(-50, -15) / 20)
        base = rng.normal(size=n).astype(np.float32) if i % 2 == 0 else pink_noise(rng, n)
        noise.append(base * level)
    return np.stack(silence), np.stack(noise).astype(np.float32)


def vad_probabilities(sess: Any, rows: np.ndarray) -> np.ndarray:
    """Speech probability per row, one row at a time with a fresh zero state (the documented convention)."""
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SILERO_SR, dtype=np.int64)
    return np.array([sess.run(None, {"input": r[None], "state": state, "sr": sr})[0][0, 0] for r in rows])


def streaming_probability(sess: Any, audio: np.ndarray) -> float:
    """Mean probability over an utterance streamed as silero does it (state and context carried): how the
    model scores the same speech when it has history, for comparison with the zero-state rows."""
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SILERO_SR, dtype=np.int64)
    probs = []
    for s in range(0, len(audio) - SILERO_CHUNK, SILERO_CHUNK):
        out, state = sess.run(None, {"input": with_context(audio, s)[None], "state": state, "sr": sr})
        probs.append(float(out[0, 0]))
    return float(np.mean(probs))


def build_vad(model: Path, out: Path, speech_count: int, other_count: int) -> dict[str, Any]:
    """Speech, silence and noise rows, plus the JSON sidecar describing the inputs that are not per-row."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y espeak-ng sox")
    rng = np.random.default_rng(SEED + 4)
    speech, utterances = speech_rows(rng, speech_count)
    silence, noise = non_speech_rows(rng, other_count)
    x = np.concatenate([speech, silence, noise])
    save_npz(out, input=x)
    sidecar = out.with_name("silero-vad.constants.json")
    sidecar.write_text(json.dumps({"sr": SILERO_SR, "state": {"zeros": [2, 1, 128], "dtype": "float32"},
                                   "batchAxis": {"state": 1}}, indent=2) + "\n")
    sess = session(model)
    figures = {kind: float(vad_probabilities(sess, rows[:64]).mean())
               for kind, rows in (("speech", speech), ("silence", silence), ("noise", noise))}
    streamed = float(np.mean([streaming_probability(sess, u) for u in utterances[:4]]))
    log(f"silero-vad: {len(x)} rows [{len(speech)} speech, {len(silence)} silence, {len(noise)} noise] x "
        f"{x.shape[1]}; mean speech probability (zero state) speech {figures['speech']:.3f}, silence "
        f"{figures['silence']:.3f}, noise {figures['noise']:.3f}; streamed utterances {streamed:.3f}")
    if figures["speech"] < figures["silence"] + 0.2:
        raise SystemExit("silero-vad does not tell the speech rows from silence: the input is wrong")
    return {"path": str(out), "constants": str(sidecar), "samples": len(x), "shape": list(x.shape),
            "rows": {"speech": [0, len(speech)], "silence": [len(speech), len(speech) + len(silence)],
                     "noise": [len(speech) + len(silence), len(x)]},
            "speechProbability": {k: round(v, 4) for k, v in figures.items()},
            "streamedUtteranceProbability": round(streamed, 4)}


# --------------------------------------------------------------------------------------------- main
def timed(name: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Each dataset's build time goes in the summary, so a slow step is visible."""
    start = time.perf_counter()
    result = build()
    result["seconds"] = round(time.perf_counter() - start, 1)
    log(f"{name} done in {result['seconds']} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_data(),
                        help="folder for models/ and the .npz files (default $KOMPRESS_CACHE/zoo-data or "
                        "~/.cache/kompress/zoo-data)")
    parser.add_argument("--cache", type=Path, default=None, help="wheel cache (default $KOMPRESS_CACHE/zoo "
                        "or ~/.cache/kompress/zoo)")
    parser.add_argument("--cls-samples", type=int, default=320)
    parser.add_argument("--rec-samples", type=int, default=256)
    parser.add_argument("--det-samples", type=int, default=64)
    parser.add_argument("--vad-speech", type=int, default=384)
    parser.add_argument("--vad-other", type=int, default=128)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    models = extract_models(args.cache or default_cache(), out / "models")
    fonts = font_files()
    log(f"{len(fonts)} fonts: {', '.join(Path(f).stem for f in fonts)}")
    data = {
        "ppocr-cls": timed("ppocr-cls", lambda: build_cls(models["ppocr-cls"], out / "ppocr-cls.npz", fonts,
                                                          args.cls_samples)),
        "ppocr-rec": timed("ppocr-rec", lambda: build_rec(models["ppocr-rec"], out / "ppocr-rec.npz", fonts,
                                                          args.rec_samples)),
        "ppocr-det": timed("ppocr-det", lambda: build_det(models["ppocr-det"], out / "ppocr-det.npz", fonts,
                                                          args.det_samples)),
        "silero-vad": timed("silero-vad", lambda: build_vad(models["silero-vad"], out / "silero-vad.npz",
                                                            args.vad_speech, args.vad_other)),
    }
    print(json.dumps({"out": str(out), "models": {k: str(v) for k, v in models.items()}, "data": data}))


if __name__ == "__main__":
    main()
