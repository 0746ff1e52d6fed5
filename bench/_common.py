"""Helpers shared by the benchmark scripts: machine facts, synthetic JPEGs, medians, tables.

Nothing here imports TensorFlow; the scripts import it themselves (after setting TF_CPP_MIN_LOG_LEVEL).
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def command_line() -> str:
    """The exact command that ran this script, as one could paste it (relative to the repo root)."""
    exe = sys.executable
    try:
        exe = os.path.relpath(exe, REPO) if Path(exe).is_relative_to(REPO) else exe
    except ValueError:
        pass
    script = sys.argv[0]
    try:
        script = os.path.relpath(Path(script).resolve(), REPO)
    except ValueError:
        pass
    return f"(cd {shlex.quote(str(REPO))} && {shlex.join([exe, script, *sys.argv[1:]])})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_lines(with_tf: bool = True) -> list[str]:
    """Machine, library versions and the command; imports TF/Keras only when ``with_tf``."""
    from automl.extractors import describe_machine, keras_backend
    from automl.search import usable_cpus

    mem = mem_total_gib()
    lines = [
        f"machine : {describe_machine()} ({cpu_model()}; {usable_cpus()} usable cpus; "
        f"{mem:.1f} GiB RAM)" if mem else f"machine : {describe_machine()} ({cpu_model()})",
        f"os      : {platform.platform()}",
        f"python  : {platform.python_version()}, numpy {np.__version__}",
    ]
    if with_tf:
        import keras
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        lines.append(f"tf/keras: tensorflow {tf.__version__}, keras {keras.__version__} "
                     f"(backend {keras.config.backend()}), GPUs visible: {len(gpus)}")
        lines.append(f"threads : tf intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
                     f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}")
    else:
        lines.append(f"keras backend (configured): {keras_backend()}")
    lines.append(f"command : {command_line()}")
    return lines


def median(values) -> float:
    return float(statistics.median(values))


def fmt_spread(values, unit: str = "", digits: int = 3) -> str:
    """'median (min..max, n=R)' for a list of repeat figures."""
    values = list(values)
    if not values:
        return "-"
    m = median(values)
    if len(values) == 1:
        return f"{m:.{digits}g}{unit}"
    return f"{m:.{digits}g}{unit} ({min(values):.{digits}g}..{max(values):.{digits}g}, n={len(values)})"


def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like uint8 RGB image: smooth colour field, a few soft blobs, fine sensor-like noise.

    Random pixels would compress badly and decode unlike real photos; this compresses and decodes
    roughly like a real JPEG photo of the same size.
    """
    from PIL import Image, ImageDraw, ImageFilter

    grid = rng.integers(0, 256, size=(rng.integers(3, 8), rng.integers(3, 8), 3), dtype=np.uint8)
    im = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        rx, ry = int(rng.integers(width // 20 + 1, width // 3 + 2)), int(rng.integers(height // 20 + 1, height // 3 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 4.0))))
    arr = np.asarray(im, dtype=np.int16)
    arr = arr + rng.normal(0.0, 6.0, size=arr.shape).astype(np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_jpeg_dataset(folder: Path, n: int, *, min_side: int = 300, max_side: int = 600, quality: int = 90,
                       seed: int = 0, classes: tuple[str, str] = ("class_a", "class_b")) -> dict:
    """Write ``n`` JPEGs of varied sizes into ``folder/<class>/``, alternating the two classes.

    Returns a summary: count, bytes on disk, side range.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        arr = natural_image(rng, w, h)
        path = folder / classes[i % len(classes)] / f"img_{i:05d}.jpg"
        Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=quality)
        total += path.stat().st_size
    return {"images": n, "bytes": total, "sides": f"{min_side}-{max_side} px", "quality": quality}


def table(headers, rows) -> str:
    from automl.report import table as _table

    return _table(headers, rows)
