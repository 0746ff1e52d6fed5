"""Peak memory of ``automl embed`` on a folder of JPEGs, and how much faster a fully cached re-run is.

Writes N photo-like JPEGs (300-600 px sides, quality 90, two class folders) to a temporary folder,
then runs ``automl embed DATA -e NAME --weights none --image-size S --store TMP --no-progress`` as a
subprocess: once on an empty store (everything computed), then ``--cached-runs`` more times on the
now full store (everything cached). Each run is launched by its own small Python process that waits
for it and reports ``getrusage(RUSAGE_CHILDREN)``: the child's peak RSS (never inherited from an
earlier run) and its wall time (measured around the child only, not the wrapper's own start-up).

Reported: peak RSS and wall time of each run, the cold run's images/s as ``automl embed`` prints it,
the ratio cold wall / median cached wall (target >= 50x), and that every cached run computed 0.

    .venv/bin/python bench/bench_cache_rss.py             # full: 2000 images, inception-resnet-v2, 299 px
    .venv/bin/python bench/bench_cache_rss.py --quick     # smoke run: 40 images at 75 px
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET_RATIO = 50.0

# Runs in a fresh interpreter per measurement, so RUSAGE_CHILDREN covers exactly one automl run.
WRAPPER = r"""
import json, resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    json.dump({"rc": p.returncode, "wall_s": wall, "maxrss": ru.ru_maxrss, "user_s": ru.ru_utime,
               "sys_s": ru.ru_stime, "stdout": p.stdout, "stderr": p.stderr}, f)
"""


def automl_command() -> list[str]:
    script = Path(sys.executable).parent / "automl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "automl"]


def measure(cmd: list[str], env: dict, workdir: Path) -> dict:
    out = Path(tempfile.mkstemp(prefix="measure-", suffix=".json", dir=workdir)[1])
    subprocess.run([sys.executable, "-c", WRAPPER, str(out), *cmd], env=env, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    # ru_maxrss is KiB on Linux, bytes on macOS.
    result["peak_rss_mib"] = result["maxrss"] / (2**20 if sys.platform == "darwin" else 2**10)
    result["table"] = parse_table(result["stdout"])
    return result


def parse_table(text: str) -> list[dict]:
    """Rows of the table ``automl embed`` prints (columns separated by two or more spaces)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("extractor") and "computed" in line:
            headers = re.split(r"\s{2,}", line.strip())
            rows = []
            for row in lines[i + 2:]:
                if not row.strip():
                    break
                cells = re.split(r"\s{2,}", row.strip())
                if len(cells) != len(headers):
                    break
                rows.append(dict(zip(headers, cells)))
            return rows
    return []


def number(value: str | None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=None, help="JPEGs to write (default 2000; --quick 40)")
    p.add_argument("--extractor", default="inception-resnet-v2",
                   help="one extractor (default inception-resnet-v2, the largest)")
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default 299; --quick 75)")
    p.add_argument("--precision", default="auto", help="passed to automl embed (default auto)")
    p.add_argument("--cached-runs", type=int, default=3, help="fully cached re-runs, median reported (default 3)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 40 images at 75 px")
    args = p.parse_args(argv)
    args.images = args.images or (40 if args.quick else 2000)
    args.image_size = args.image_size or (75 if args.quick else 299)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print("\n".join(_common.machine_lines(with_tf=False)))
    tmp = Path(tempfile.mkdtemp(prefix="automl-bench-cache-"))
    try:
        data, store = tmp / "data", tmp / "store"
        t0 = time.perf_counter()
        summary = _common.write_jpeg_dataset(data, args.images, seed=2)
        print(f"data    : {summary['images']} JPEGs, {summary['bytes'] / 2**20:.1f} MiB, {summary['sides']}, "
              f"quality {summary['quality']}, two class folders (written in {time.perf_counter() - t0:.1f} s)")
        cmd = [*automl_command(), "embed", str(data), "-e", args.extractor, "--weights", "none",
               "--image-size", str(args.image_size), "--precision", args.precision, "--store", str(store),
               "--no-progress"]
        env = {k: v for k, v in os.environ.items() if k != "AUTOML_STORE"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print(f"measured: {shlex.join(cmd)}\n", flush=True)

        runs = []
        for i in range(1 + args.cached_runs):
            label = "cold (empty store)" if i == 0 else f"cached #{i}"
            r = measure(cmd, env, tmp)
            r["label"] = label
            runs.append(r)
            if r["rc"] != 0:
                print(r["stdout"], r["stderr"], sep="\n")
                raise SystemExit(f"automl embed failed (exit {r['rc']}) in the {label} run")
            row = r["table"][0] if r["table"] else {}
            print(f"{label}: wall {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"cpu {r['user_s'] + r['sys_s']:.1f} s; automl printed: computed {row.get('computed')}, "
                  f"cache hits {row.get('cache hits')}, images/s {row.get('images/s')}", flush=True)
        print("\nautoml embed output of the cold run:\n" + runs[0]["stdout"].rstrip())
        print("\nautoml embed output of the last cached run:\n" + runs[-1]["stdout"].rstrip())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cold, cached = runs[0], runs[1:]
    cached_wall = _common.median(r["wall_s"] for r in cached)
    ratio = cold["wall_s"] / cached_wall
    cold_row = cold["table"][0] if cold["table"] else {}
    computed_cached = [number((r["table"][0] if r["table"] else {}).get("computed")) for r in cached]
    all_zero = all(c == 0 for c in computed_cached)
    print("\n== results ==")
    rows = [(r["label"], round(r["wall_s"], 2), round(r["peak_rss_mib"]), round(r["user_s"] + r["sys_s"], 1),
             (r["table"][0] if r["table"] else {}).get("computed", "?"),
             (r["table"][0] if r["table"] else {}).get("cache hits", "?"),
             (r["table"][0] if r["table"] else {}).get("images/s", "?")) for r in runs]
    print(_common.table(["run", "wall s", "peak RSS MiB", "cpu s", "computed", "cache hits", "images/s"], rows))
    print()
    print(_common.table(["figure", "value", "target", "met"], [
        ("cold wall / median cached wall", f"{ratio:.1f}x", f">= {TARGET_RATIO:g}x", "yes" if ratio >= TARGET_RATIO else "NO"),
        ("cached runs computed 0", str(all_zero), "True", "yes" if all_zero else "NO"),
        ("cold peak RSS", f"{cold['peak_rss_mib'] / 1024:.2f} GiB", "-", "-"),
        ("cold images/s (automl's own figure)", cold_row.get("images/s", "?"), "-", "-"),
    ]))
    print(f"\nsettings: {args.images} images, {args.extractor}, {args.image_size} px, precision {args.precision}, "
          f"weights none; {args.cached_runs} cached runs")
    if args.quick:
        print("(--quick: a smoke run at tiny sizes; model start-up dominates its cold run, so its ratio "
              "says nothing about the full-size one)")
    if args.json:
        args.json.write_text(json.dumps({
            "command": _common.command_line(), "machine": _common.machine_lines(with_tf=False),
            "measured_command": cmd, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} | {"stdout": r["stdout"]}
                     for r in runs],
            "cold_over_cached": ratio, "cached_all_zero_computed": all_zero}, indent=2))
        print(f"wrote {args.json}")
    return 0 if cold["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
