"""Embedding throughput of automl's pipeline against plain Keras, and against the hardware ceiling.

For each extractor, in one process (figures are medians of ``--repeats`` timed runs, after one
untimed warm-up run per method; ours, baseline A and the JPEG run are interleaved per repeat so a
change in machine load hits all of them alike):

- ours: ``automl.embed.embed_items`` on N in-memory uint8 images (items whose ``load`` returns the
  array), extractor built with precision "auto", default batch size, a fresh empty cache per repeat;
  timed from the call to its return (preprocess + predict + cache writes; model build excluded).
- baseline A: the same architecture built with precision "float32", plain
  ``model.predict(x, batch_size=32, verbose=0)`` on the same images already preprocessed (its
  preprocessing is not timed, which favours the baseline).
- baseline B: float32, ``model.predict(x[i:i+1], verbose=0)`` one image at a time, on fewer images.
- fraction of the dense-matmul ceiling: the model's FLOPs per image counted from its Conv2D,
  DepthwiseConv2D, SeparableConv2D and Dense layers (2 x multiply-adds, from output and kernel
  shapes; batch norm, activations, pooling and additions not counted), times ours' images/s, over
  the FLOP/s of a large square TensorFlow matmul in the resolved precision (median of several).
- from JPEG files: N JPEGs (photo-like, 300-600 px sides, quality 90, two class folders) loaded
  with ``automl.data.load_dataset`` and embedded with ``embed_items`` (decoding in its worker
  threads) into a fresh cache; its images/s as a fraction of the in-memory figure. The files were
  just written, so they are read from the OS page cache (decode cost measured, not disk speed).

Random (seeded) weights throughout: speed does not depend on weight values.

    .venv/bin/python bench/bench_embed.py                 # full: 3 extractors, 299 px, 256 images
    .venv/bin/python bench/bench_embed.py --quick         # smoke run: 75 px, 64 images
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGETS = {"ours/A": 2.0, "ours/B": 5.0, "disk/mem": 0.8}


class MemItem:
    """The part of ``automl.data.Item`` that ``embed_items`` uses, over an in-memory uint8 image."""

    __slots__ = ("path", "fingerprint", "_pixels")

    def __init__(self, path: str, fingerprint: str, pixels: np.ndarray):
        self.path, self.fingerprint, self._pixels = path, fingerprint, pixels

    def load(self, size: int | None = None) -> np.ndarray:
        if size is not None and self._pixels.shape[:2] != (size, size):
            raise ValueError(f"in-memory image is {self._pixels.shape}, asked for {size} px")
        return self._pixels


# --- FLOPs and the matmul ceiling ---------------------------------------------------------------


def _leaf_layers(model):
    """Every layer of a (possibly nested) Keras model, nested models expanded."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _leaf_layers(layer)
        else:
            yield layer


def count_flops(model) -> tuple[float, dict[str, float]]:
    """FLOPs per image (2 x multiply-adds) of the conv and dense layers, and the split by layer type."""
    from keras import layers as L

    by_type: dict[str, float] = {}
    for layer in _leaf_layers(model):
        macs = 0.0
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)):
            out = layer.output.shape  # (None, H, W, C)
            spatial = float(out[1] * out[2])
            if isinstance(layer, L.SeparableConv2D):
                macs = spatial * (np.prod(layer.depthwise_kernel.shape) + np.prod(layer.pointwise_kernel.shape))
            elif isinstance(layer, L.DepthwiseConv2D):
                macs = spatial * np.prod(layer.kernel.shape)
            else:  # Conv2D kernel (kh, kw, cin / groups, cout): every output pixel, every output channel
                macs = spatial * np.prod(layer.kernel.shape)
        elif isinstance(layer, L.Dense):
            out = layer.output.shape
            positions = float(np.prod([d for d in out[1:-1]])) if len(out) > 2 else 1.0
            macs = positions * np.prod(layer.kernel.shape)
        if macs:
            name = type(layer).__name__
            by_type[name] = by_type.get(name, 0.0) + 2.0 * float(macs)
    return sum(by_type.values()), by_type


def matmul_ceiling(dtype: str, n: int, repeats: int) -> list[float]:
    """FLOP/s of an n x n @ n x n TensorFlow matmul in ``dtype``, one figure per timed repeat."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.cast(tf.constant(rng.standard_normal((n, n), dtype=np.float32)), dtype)
    b = tf.cast(tf.constant(rng.standard_normal((n, n), dtype=np.float32)), dtype)
    float(tf.reduce_sum(tf.matmul(a, b)[:1, :1]))  # warm-up (oneDNN primitive creation)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = tf.matmul(a, b)
        float(c[0, 0])  # forces completion
        rates.append(2.0 * n**3 / (time.perf_counter() - t0))
    return rates


# --- the timed methods ------------------------------------------------------------------------


def run_ours(items, extractor, batch_size: int, tmp_root: Path) -> tuple[float, object]:
    from automl.embed import embed_items
    from automl.store import Store

    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=tmp_root))
    try:
        store = Store(store_dir)
        t0 = time.perf_counter()
        res = embed_items(items, extractor.key, store.embedding_cache, lambda: extractor,
                          batch_size=batch_size, progress=False)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    if res.computed != len(items) or res.cache_hits:
        raise RuntimeError(f"expected {len(items)} computed and 0 cache hits, got {res.computed} / {res.cache_hits}")
    return len(items) / wall, res


def run_baseline_a(model, x: np.ndarray) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = model.predict(x, batch_size=32, verbose=0)
    return len(x) / (time.perf_counter() - t0), np.asarray(out, np.float32)


def run_baseline_b(model, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    for i in range(len(x)):
        model.predict(x[i:i + 1], verbose=0)
    return len(x) / (time.perf_counter() - t0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), np.nan)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extractors", default=None,
                   help="comma-separated extractor names (default: all registered)")
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default 299; --quick 75)")
    p.add_argument("--images", type=int, default=None,
                   help="images for ours, baseline A and the JPEG run (default 256; --quick 64, a multiple of "
                        "the default batch at 75 px, so no padded batch skews the tiny run)")
    p.add_argument("--single-images", type=int, default=None,
                   help="images for baseline B, one predict call each (default 32; --quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 3; --quick 2)")
    p.add_argument("--precision", default="auto", help="precision of 'ours' (default auto)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size of 'ours' (default automl.embed.default_batch_size)")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul side for the ceiling (default 4096; --quick 1024)")
    p.add_argument("--matmul-repeats", type=int, default=5, help="timed matmuls, median reported (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 75 px, 64 images, 2 repeats")
    args = p.parse_args(argv)
    q = args.quick
    args.image_size = args.image_size or (75 if q else 299)
    args.images = args.images or (64 if q else 256)
    args.single_images = min(args.single_images or (4 if q else 32), args.images)
    args.repeats = args.repeats or (2 if q else 3)
    args.matmul_size = args.matmul_size or (1024 if q else 4096)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from automl.data import fingerprint_array, load_dataset
    from automl.embed import default_batch_size
    from automl.extractors import EXTRACTORS, build_extractor

    names = [EXTRACTORS.get(n.strip()).name for n in args.extractors.split(",")] if args.extractors \
        else list(EXTRACTORS.names())
    import keras
    import tensorflow as tf  # noqa: F401  (versions, matmul)

    print("\n".join(_common.machine_lines()))
    print(f"settings: extractors {','.join(names)}; {args.image_size} px; {args.images} images "
          f"(baseline B: {args.single_images}); {args.repeats} timed repeats after 1 warm-up; "
          f"weights none (seed 0)\n", flush=True)

    tmp_root = Path(tempfile.mkdtemp(prefix="automl-bench-embed-"))
    results: dict = {"command": _common.command_line(), "machine": _common.machine_lines(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "extractors": {}}
    try:
        # Shared inputs: in-memory images at the target size, and the same number of JPEGs on disk.
        rng = np.random.default_rng(0)
        s = args.image_size
        images = np.stack([_common.natural_image(rng, s, s) for _ in range(args.images)])
        mem_items = [MemItem(f"<memory>[{i}]", fingerprint_array(images[i]), images[i]) for i in range(len(images))]
        jpeg_dir = tmp_root / "jpegs"
        t0 = time.perf_counter()
        summary = _common.write_jpeg_dataset(jpeg_dir, args.images, seed=1)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dataset = load_dataset(jpeg_dir)
        load_s = time.perf_counter() - t0
        print(f"JPEGs: {summary['images']} files, {summary['bytes'] / 2**20:.1f} MiB, {summary['sides']}, "
              f"quality {summary['quality']} (written in {write_s:.1f} s); load_dataset {load_s:.2f} s "
              f"({len(dataset.items) / load_s:.0f} files/s, fingerprint + header, not timed below)", flush=True)
        results["jpegs"] = {**summary, "load_dataset_s": load_s}

        ceilings: dict[str, list[float]] = {}

        def ceiling(dtype: str) -> float:
            if dtype not in ceilings:
                ceilings[dtype] = matmul_ceiling(dtype, args.matmul_size, args.matmul_repeats)
                print(f"matmul ceiling {dtype} {args.matmul_size}x{args.matmul_size}: "
                      f"{_common.fmt_spread([r / 1e9 for r in ceilings[dtype]], ' GFLOP/s')}", flush=True)
            return _common.median(ceilings[dtype])

        for name in names:
            print(f"\n== {name} ==", flush=True)
            t0 = time.perf_counter()
            ours_ex = build_extractor(name, weights="none", image_size=s, precision=args.precision, seed=0)
            build_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            base_ex = build_extractor(name, weights="none", image_size=s, precision="float32", seed=0)
            build_base = time.perf_counter() - t0
            precision = ours_ex.key.precision
            bs = args.batch_size or default_batch_size(s)
            flops, by_type = count_flops(ours_ex.model)
            flops_base, _ = count_flops(base_ex.model)
            assert abs(flops - flops_base) <= 1e-6 * flops, "ours and baseline differ in architecture"
            if args.images % bs:
                print(f"note: {args.images} images is not a multiple of batch {bs}; automl pads its last batch "
                      f"to {bs} images, so ours computes {-(-args.images // bs) * bs} images' worth", flush=True)
            print(f"precision {precision} (asked {args.precision}), batch {bs}; built in {build_ours:.1f} s "
                  f"(+ float32 baseline {build_base:.1f} s); {flops / 1e9:.3f} GFLOP/image "
                  f"({', '.join(f'{k} {v / flops:.0%}' for k, v in sorted(by_type.items()))})", flush=True)

            x = base_ex.preprocess(images)  # same function as ours' preprocess (the backbone's preprocess_input)
            xb = x[: args.single_images]

            # Warm-up (untimed): traces each predict function at its batch shapes.
            _, warm_res = run_ours(mem_items, ours_ex, bs, tmp_root)
            _, base_out = run_baseline_a(base_ex.model, x)
            base_ex.model.predict(xb[:1], verbose=0)
            cos = cosine_rows(warm_res.embeddings, base_out)

            ours, base_a, disk, ours_internal = [], [], [], []
            for r in range(args.repeats):
                ips, res = run_ours(mem_items, ours_ex, bs, tmp_root)
                ours.append(ips)
                ours_internal.append(res.images_per_s)
                base_a.append(run_baseline_a(base_ex.model, x)[0])
                disk.append(run_ours(dataset.items, ours_ex, bs, tmp_root)[0])
                print(f"  repeat {r + 1}: ours {ours[-1]:.2f} img/s, baseline A {base_a[-1]:.2f}, "
                      f"from JPEG {disk[-1]:.2f}", flush=True)
            base_b = [run_baseline_b(base_ex.model, xb) for _ in range(args.repeats)]
            print(f"  baseline B (one at a time, {len(xb)} images): "
                  f"{', '.join(f'{v:.2f}' for v in base_b)} img/s", flush=True)

            mat_dtype = precision if precision in ("bfloat16", "float16") else "float32"
            ceil = ceiling(mat_dtype)
            ceil32 = ceiling("float32")
            m_ours, m_a, m_b, m_disk = (_common.median(v) for v in (ours, base_a, base_b, disk))
            results["extractors"][name] = {
                "precision": precision, "batch_size": bs, "build_s": build_ours,
                "gflop_per_image": flops / 1e9, "gflop_by_layer_type": {k: v / 1e9 for k, v in by_type.items()},
                "ours_images_per_s": ours, "ours_images_per_s_internal": ours_internal,
                "baseline_a_images_per_s": base_a, "baseline_b_images_per_s": base_b,
                "baseline_b_images": len(xb), "jpeg_images_per_s": disk,
                "ours_over_a": m_ours / m_a, "ours_over_b": m_ours / m_b, "jpeg_over_memory": m_disk / m_ours,
                "ceiling_dtype": mat_dtype, "ceiling_gflops": ceil / 1e9,
                "ours_fraction_of_ceiling": m_ours * flops / ceil,
                "baseline_a_fraction_of_float32_ceiling": m_a * flops / ceil32,
                "cosine_ours_vs_float32": {"min": float(np.nanmin(cos)), "mean": float(np.nanmean(cos))},
            }
            del ours_ex, base_ex, x, xb, warm_res, base_out
            keras.backend.clear_session()
            gc.collect()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    ex = results["extractors"]
    results["ceilings_gflops"] = {k: [v / 1e9 for v in vals] for k, vals in ceilings.items()}
    print("\n== results (img/s: median of repeats) ==")
    rows = [(n, r["precision"], r["batch_size"], _common.median(r["ours_images_per_s"]),
             _common.median(r["baseline_a_images_per_s"]), _common.median(r["baseline_b_images_per_s"]),
             round(r["ours_over_a"], 2), round(r["ours_over_b"], 1), round(r["gflop_per_image"], 3),
             f"{r['ours_fraction_of_ceiling']:.1%} of {r['ceiling_dtype']}",
             _common.median(r["jpeg_images_per_s"]), round(r["jpeg_over_memory"], 2)) for n, r in ex.items()]
    print(_common.table(["extractor", "precision", "batch", "ours", "A f32 b32", "B f32 1-by-1", "ours/A",
                         "ours/B", "GFLOP/img", "ceiling used", "JPEG", "JPEG/mem"], rows))
    print()
    rows = [(n, r["ceiling_dtype"], round(r["ceiling_gflops"], 1),
             round(r["gflop_per_image"] * _common.median(r["ours_images_per_s"]), 1),
             f"{r['baseline_a_fraction_of_float32_ceiling']:.1%}",
             f"{r['cosine_ours_vs_float32']['mean']:.4f} (min {r['cosine_ours_vs_float32']['min']:.4f})")
            for n, r in ex.items()]
    print(_common.table(["extractor", "ceiling dtype", "ceiling GFLOP/s", "ours GFLOP/s",
                         "A of f32 ceiling", "cosine ours vs A"], rows))
    print("\n== targets ==")
    rows = []
    for n, r in ex.items():
        for label, key in (("ours/A", "ours_over_a"), ("ours/B", "ours_over_b"), ("JPEG/mem", "jpeg_over_memory")):
            target = TARGETS["disk/mem" if label == "JPEG/mem" else label]
            rows.append((n, label, round(r[key], 2), f">= {target:g}", "yes" if r[key] >= target else "NO"))
    print(_common.table(["extractor", "ratio", "value", "target", "met"], rows))
    if args.quick:
        print("\n(--quick: a smoke run at tiny sizes; its figures say nothing about full-size performance)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
