"""DCGAN training speed: images/s and wall time to train one class's generator with the default settings.

Data: BreastMNIST's minority class (class 0, "malignant"), its 147 training images, 28 px, so the
``dcgan`` augmenter trains 32x32 networks. Each repeat trains from scratch in a fresh folder, in
this process, through ``DCGAN.fit`` (what ``automl fit --augment dcgan`` runs); images/s counts
real images seen by the discriminator (epochs x images / wall time). Loading and decoding the images
is included (it is a small part); writing the generator and its sample grid too.

    .venv/bin/python bench/bench_dcgan.py                 # defaults, median of 3
    .venv/bin/python bench/bench_dcgan.py --size 64       # the 64x64 networks on the same images

On cores shared with other jobs, torch's OpenMP threads spin while they wait for each other and
training runs several times slower than its share of the CPU; ``OMP_WAIT_POLICY=PASSIVE`` (set before
Python starts) avoids that.
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

from _common import fmt_spread, machine_lines, median  # noqa: E402

from automl.augment.dcgan import DCGAN  # noqa: E402
from automl.data import load_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "breastmnist.npz"))
    parser.add_argument("--label", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=0, help="the augmenter's size parameter (0 = auto)")
    parser.add_argument("--epochs", type=int, default=DCGAN.defaults["epochs"])
    args = parser.parse_args()

    import torch

    dataset = load_dataset(args.data)
    items = [it for it in dataset.split("train") if it.label == args.label]
    params = {"size": args.size, "epochs": args.epochs}
    print("\n".join(machine_lines(with_tf=False)))
    print(f"torch   : {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"data    : {args.data}, class {args.label} ({dataset.classes[args.label]}), {len(items)} training "
          f"images, {items[0].width}x{items[0].height} px")

    # Other processes on the same cores slow torch's OpenMP threads far more than in proportion.
    print(f"load    : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) before the first repeat",
          flush=True)
    seconds, rates, summary = [], [], {}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            augmenter = DCGAN(**params)
            t0 = time.perf_counter()
            augmenter.fit({args.label: items}, dataset.classes, [args.label], Path(work), seed=repeat,
                          progress=False)
            wall = time.perf_counter() - t0
            summary = json.loads((Path(work) / f"class-{args.label}" / "training.json").read_text())
            augmenter.close()
        seconds.append(wall)
        rates.append(summary["epochs_done"] * len(items) / wall)
        last = summary["history"][-1]
        print(f"repeat {repeat}: {wall:.1f} s, {rates[-1]:.0f} images/s, final epoch loss_D {last['loss_d']:.3f} "
              f"loss_G {last['loss_g']:.3f}", flush=True)

    print(f"\nsettings: {summary['side']}x{summary['side']} networks, width {summary['width']}, "
          f"{summary['epochs_done']} epochs, batch {summary['batch_size']}, {summary['steps']} steps")
    print(f"wall time to train : {fmt_spread(seconds, ' s')}")
    print(f"training images/s  : {fmt_spread(rates)}")
    print(f"median             : {median(seconds):.1f} s, {median(rates):.0f} images/s")
    print(f"load after         : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")


if __name__ == "__main__":
    main()
