"""PGGAN training speed: images/s per phase, and the time to grow to 64 and 128 px.

Data: BreastMNIST's minority class (class 0, 147 training images, 28 px, upsampled to ``--max-size``
when loaded), through ``PGGAN.fit`` (what ``automl fit --augment pggan`` runs), in this process, in a
fresh folder. Every phase (4 px stabilise; then per doubling a fade and a stabilise phase) shows
``--images-per-phase`` real images; images/s counts real images through the critic per second of
that phase (each step is one critic step with the gradient penalty and one generator step).

The wall time to reach a size is the sum of the phases up to and including that size's stabilise
phase. "Projected" scales each phase's measured rate to other images per phase: the default
(``images_per_phase: 16000``) and the paper's 800k. Costs per image do not depend on how many
images a phase shows, so the projection is as good as the measured rates (same width and batch).

    .venv/bin/python bench/bench_pggan.py                            # width 128 (the default), 128 px
    .venv/bin/python bench/bench_pggan.py --width 32 --max-size 64   # a narrower, smaller network

On cores shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE`` before Python starts
(docs/benchmarks.md, the DCGAN section).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine_lines  # noqa: E402

from automl.augment.pggan import PGGAN, growth_schedule  # noqa: E402
from automl.data import load_dataset  # noqa: E402

PAPER_IMAGES_PER_PHASE = 800_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "breastmnist.npz"))
    parser.add_argument("--label", type=int, default=0)
    parser.add_argument("--max-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=PGGAN.defaults["width"])
    parser.add_argument("--batch-size", type=int, default=PGGAN.defaults["batch_size"])
    parser.add_argument("--images-per-phase", type=int, default=64, help="tiny: a few steps per phase")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()

    import torch

    dataset = load_dataset(args.data)
    items = [it for it in dataset.split("train") if it.label == args.label]
    params = {"max_size": args.max_size, "width": args.width, "batch_size": args.batch_size,
              "images_per_phase": args.images_per_phase, "output_size": 0}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print("\n".join(machine_lines(with_tf=False)))
    print(f"torch   : {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "")
          + f", OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"data    : {args.data}, class {args.label} ({dataset.classes[args.label]}), {len(items)} training "
          f"images, {items[0].width}x{items[0].height} px")
    print(f"settings: max_size {args.max_size}, width {args.width}, batch {args.batch_size}, "
          f"{args.images_per_phase} images per phase, {len(growth_schedule(args.max_size, 1))} phases")
    print(f"load    : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) before", flush=True)

    with tempfile.TemporaryDirectory() as work:
        augmenter = PGGAN(**params)
        t0 = time.perf_counter()
        augmenter.fit({args.label: items}, dataset.classes, [args.label], Path(work), seed=0, progress=False)
        wall = time.perf_counter() - t0
        summary = json.loads((Path(work) / f"class-{args.label}" / "training.json").read_text())
        augmenter.close()

    history = summary["history"]
    print(f"\n{'phase':>5}  {'kind':<9} {'size':>4}  {'images':>6}  {'seconds':>8}  {'images/s':>9}")
    for h in history:
        print(f"{h['phase']:>5}  {h['kind']:<9} {h['size']:>4}  {h['images']:>6}  {h['seconds']:>8.2f}  "
              f"{h['images_per_second']:>9.1f}")
    print(f"\nwall time of the whole fit: {wall:.1f} s (loading, checkpoints, sample grid included)")

    def reach(size: int, images_per_phase: int | None) -> float:
        """Seconds of the phases up to ``size``: measured, or projected to ``images_per_phase``."""
        return sum((h["seconds"] if images_per_phase is None else images_per_phase / h["images_per_second"])
                   for h in history if h["size"] <= size)

    figures = {"settings": params, "device": device, "wall_s": wall, "history": history, "reach": {}}
    sizes = [s for s in (64, 128) if s <= args.max_size] or [args.max_size]
    default = PGGAN.defaults["images_per_phase"]
    print(f"\n{'to reach':>8}  {'measured':>9}  {f'projected, {default:,} img/phase':>30}  "
          f"{f'projected, {PAPER_IMAGES_PER_PHASE:,} (paper)':>30}")
    for size in sizes:
        measured, at_default, at_paper = reach(size, None), reach(size, default), reach(size, PAPER_IMAGES_PER_PHASE)
        figures["reach"][size] = {"measured_s": measured, "default_s": at_default, "paper_s": at_paper}
        print(f"{size:>5} px  {measured:>8.1f}s  {at_default / 3600:>28.2f} h  {at_paper / 86400:>28.1f} d")
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
