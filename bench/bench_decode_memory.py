"""Peak memory of loading and embedding a dataset that holds 0, 10 and 100 hostile images.

The hostile images are valid PNGs of one colour, cycling through four kinds (tests/bombs.py):

- a 20000 x 20000 grey PNG (400 Mpx; ~0.4 MB on disk), refused from its header;
- a 28000 x 28000 grey PNG (784 Mpx; ~0.8 MB), which Pillow itself refuses to open, refused too;
- a 9400 x 9400 RGB PNG and a 9400 x 9400 RGBA PNG (88 Mpx, just under ``automl.images.MAX_PIXELS``;
  ~0.3 MB each), accepted and decoded: the most a single image may cost.

Beside them, ``--normal`` photo-like JPEGs (300-600 px). Each count runs in a fresh process that does
what ``automl embed DATA --skip-bad`` does: ``load_dataset(skip_bad=True)``, then ``embed_items`` with
4 decode threads and the default batch size at ``--image-size``, but through a stand-in extractor
(the mean colour) so that the figure is decoding's alone, over the model. Reported per run: the
process's peak RSS (``ru_maxrss``), its growth over the run without hostile images, the images
refused and decoded, the most bytes ``automl.images.DECODE_BUDGET`` held at once, and wall time.

    .venv/bin/python bench/bench_decode_memory.py            # 0, 10 and 100 hostile images, 200 JPEGs
    .venv/bin/python bench/bench_decode_memory.py --quick    # 0, 4 and 8 hostile images, 20 JPEGs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

sys.path.insert(0, str(_common.REPO / "tests"))
from bombs import png_bomb  # noqa: E402

KINDS = [  # (width, height, channels, what happens)
    (20000, 20000, 1, "refused"),
    (28000, 28000, 1, "refused"),
    (9400, 9400, 3, "decoded"),
    (9400, 9400, 4, "decoded"),
]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from automl import images
from automl.data import load_dataset
from automl.embed import default_batch_size, embed_items
from automl.extractors import Extractor, ExtractorKey
from automl.store import Store

data, store, size = Path(sys.argv[1]), Store(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
ds = load_dataset(data, skip_bad=True)
key = ExtractorKey("mean-colour", "none", size, "float32", "none")
model = type("Mean", (), {"predict_on_batch": lambda self, x: x.mean(axis=(1, 2))})()
build = lambda: Extractor(key, 3, model, preprocess=lambda x: x)
result = embed_items(ds.items, key, store.embedding_cache, build, skip_bad=True, progress=False,
                     batch_size=default_batch_size(size))
print(json.dumps({
    "items": len(ds.items), "refused": len(ds.bad_files) + len(result.bad_files),
    "embedded": len(result.kept), "budget_peak": images.DECODE_BUDGET.peak,
    "wall_s": time.perf_counter() - t0,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def write_hostile(folder: Path, n: int) -> None:
    for i in range(n):
        w, h, c, _ = KINDS[i % len(KINDS)]
        (folder / ("class_a", "class_b")[i % 2] / f"hostile_{i:03d}.png").write_bytes(
            png_bomb(w, h, channels=c, tag=str(i)))


def run(counts: list[int], normal: int, size: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for n in counts:
            data = Path(tmp) / f"data-{n}"
            _common.write_jpeg_dataset(data, normal)
            write_hostile(data, n)
            disk = sum(p.stat().st_size for p in data.rglob("hostile_*.png"))
            proc = subprocess.run([sys.executable, "-c", CHILD, str(data), str(Path(tmp) / f"store-{n}"), str(size)],
                                  cwd=_common.REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-4000:])
                raise SystemExit(f"the run with {n} hostile images failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(hostile=n, hostile_mib=disk / 2**20,
                     expected_decoded=sum(KINDS[i % len(KINDS)][3] == "decoded" for i in range(n)))
            rows.append(r)
            print(f"{n} hostile: {json.dumps(r)}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default=None, help="hostile images per run, comma-separated (default 0,10,100)")
    p.add_argument("--normal", type=int, default=None, help="photo-like JPEGs beside them (default 200)")
    p.add_argument("--image-size", type=int, default=299, help="the extractor's input size (default 299)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 0, 4 and 8 hostile images, 20 JPEGs")
    args = p.parse_args(argv)
    counts = [int(c) for c in (args.counts or ("0,4,8" if args.quick else "0,10,100")).split(",")]
    normal = args.normal or (20 if args.quick else 200)
    from automl import images

    print("\n".join(_common.machine_lines(with_tf=False)))
    print(f"limits  : MAX_PIXELS {images.MAX_PIXELS:,} px, DECODE_MEMORY {images.DECODE_MEMORY / 2**20:.0f} MiB\n")
    rows = run(counts, normal, args.image_size)
    base = next((r["peak_rss_mib"] for r in rows if r["hostile"] == 0), None)
    print("\n== results ==")
    print(_common.table(
        ["hostile", "on disk MiB", "refused", "decoded near-limit", "embedded", "peak RSS MiB", "over 0 hostile MiB",
         "budget peak MiB", "wall s"],
        [[r["hostile"], f"{r['hostile_mib']:.1f}", r["refused"], r["expected_decoded"], r["embedded"],
          f"{r['peak_rss_mib']:.0f}", "-" if base is None else f"{r['peak_rss_mib'] - base:+.0f}",
          f"{r['budget_peak'] / 2**20:.0f}", f"{r['wall_s']:.1f}"] for r in rows]))
    print(f"\nsettings: {normal} JPEGs (300-600 px) + hostile PNGs, {args.image_size} px, stand-in extractor")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "machine": _common.machine_lines(with_tf=False)}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
