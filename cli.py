"""The ``automl`` command line (also what a container runs).

Imports stay light at module level: TensorFlow, torch and diffusers load only inside the commands
that need them, so ``automl --help`` answers at once.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer

from automl import __version__
from automl.errors import AutomlError

app = typer.Typer(
    name="automl",
    help="AutoML for image classification on small, hard datasets: frozen CNN embeddings, shallow "
    "heads, and whether synthetic images help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DATA_HELP = "A folder of class folders, a folder with train/ and test/ (optionally val/), or a MedMNIST-style .npz."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"automl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def _split_names(values: Optional[List[str]]) -> Optional[List[str]]:
    """``--extractors a,b`` and ``--extractors a --extractors b`` mean the same."""
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n.strip()]


@app.command()
def embed(
    data: Path = typer.Argument(..., help=DATA_HELP),
    extractors: Optional[List[str]] = typer.Option(
        None, "--extractors", "-e", help="Comma-separated extractor names (default: all)."),
    weights: str = typer.Option(
        "imagenet", help="imagenet (Keras download and cache), none (random, seeded), or a weights file."),
    image_size: int = typer.Option(299, help="Input size in pixels (Keras minimums: 75, 71 for xception)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per model call (default: from the image size)."),
    precision: str = typer.Option(
        "auto", help="auto (fastest the hardware supports: bfloat16 on AMX/AVX-512-BF16 CPUs, float16 on "
        "GPUs, else float32), float32, bfloat16 or float16."),
    store: Optional[Path] = typer.Option(None, help="Store folder (default: $AUTOML_STORE or ./store).",
                                         envvar="AUTOML_STORE"),
    seed: int = typer.Option(0, help="Seed for random weights (--weights none)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out undecodable files and list them."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Embed every image with the frozen extractors, reusing cached embeddings."""
    from automl.data import load_dataset
    from automl.pipeline import embed_dataset
    from automl.report import table
    from automl.store import Store

    dataset = load_dataset(data, skip_bad=skip_bad)
    _warn_dataset(dataset)
    results = embed_dataset(
        dataset, Store(store), _split_names(extractors), weights=weights, image_size=image_size,
        precision=precision, seed=seed, batch_size=batch_size, skip_bad=skip_bad, progress=progress)
    rows = [(r.key.extractor, r.key.precision, r.embeddings.shape[1] if r.embeddings.size else None,
             r.images, r.cache_hits, r.computed, r.images_per_s, round(r.seconds + r.build_seconds, 1))
            for r in results]
    typer.echo(table(["extractor", "precision", "dim", "images", "cache hits", "computed", "images/s", "seconds"],
                     rows))
    bad = {b.path: b.reason for r in results for b in r.bad_files}
    if bad:
        typer.echo(f"skipped {len(bad)} undecodable file(s):", err=True)
        for path, reason in bad.items():
            typer.echo(f"  {path}: {reason}", err=True)


@app.command()
def inspect(
    data: Path = typer.Argument(..., help=DATA_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="List undecodable files instead of failing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Classes, counts per split, image sizes and modes, duplicates and bad files."""
    from automl.data import load_dataset

    dataset = load_dataset(data, skip_bad=skip_bad)
    summary = _summary(dataset)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(_summary_text(summary))


@app.command("demo-data")
def demo_data(
    folder: Path = typer.Argument(..., help="Where to write the dataset (created; must not hold one already)."),
    per_class: int = typer.Option(60, min=4, help="Images per class (a quarter go to test/)."),
    size: int = typer.Option(64, min=16, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same images."),
) -> None:
    """Write a small synthetic two-class dataset (train/ and test/ folders) for an offline demo."""
    from automl.demo import make_demo_dataset
    from automl.errors import DataError

    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder} is not empty; pass a new folder for the demo dataset.")
    make_demo_dataset(folder, per_class=per_class, size=size, seed=seed)
    typer.echo(f"wrote {2 * per_class} images to {folder}/train and {folder}/test")


def _summary(ds) -> dict:
    widths = [it.width for it in ds.items]
    heights = [it.height for it in ds.items]
    areas = sorted(ds.items, key=lambda it: it.width * it.height)
    return {
        "dataset": ds.root,
        "layout": ds.layout,
        "classes": ds.classes,
        "counts": ds.counts(),
        "test_split": "given" if "test" in ds.splits else "none: fit holds out a stratified, seeded 20 %",
        "sizes": {
            "smallest": f"{areas[0].width}x{areas[0].height}",
            "median": f"{int(statistics.median(widths))}x{int(statistics.median(heights))}",
            "largest": f"{areas[-1].width}x{areas[-1].height}",
        },
        "modes": dict(Counter(it.mode for it in ds.items).most_common()),
        "duplicate_groups": [[it.path for it in g] for g in ds.duplicates()],
        "train_test_duplicates": [[a.path, b.path] for a, b in ds.leaks()],
        "conflicting_labels": [[f"{it.path} ({ds.classes[it.label]})" for it in g] for g in ds.conflicts()],
        "bad_files": [{"path": b.path, "reason": b.reason} for b in ds.bad_files],
        "ignored_files": ds.ignored_files,
    }


def _summary_text(s: dict) -> str:
    from automl.report import table

    classes = s["classes"]
    rows = [[split] + [counts[c] for c in classes] + [sum(counts.values())] for split, counts in s["counts"].items()]
    out = [
        f"dataset  {s['dataset']}  ({s['layout']})",
        f"classes  {len(classes)}",
        f"test     {s['test_split']}",
        "",
        table(["split"] + classes + ["total"], rows),
        "",
        f"sizes    smallest {s['sizes']['smallest']}, median {s['sizes']['median']}, largest {s['sizes']['largest']}",
        "modes    " + ", ".join(f"{m} {n}" for m, n in s["modes"].items()),
    ]
    groups = s["duplicate_groups"]
    out.append(f"duplicates  {len(groups)} group(s) of identical images"
               + (f" ({sum(len(g) for g in groups)} images)" if groups else ""))
    for g in groups[:10]:
        out.append("  " + " == ".join(g))
    if len(groups) > 10:
        out.append(f"  ... {len(groups) - 10} more (see --json)")
    for title, key in (("train/test duplicates (the test split is not held out)", "train_test_duplicates"),
                       ("identical images under different classes", "conflicting_labels")):
        if s[key]:
            out.append(f"{title}: {len(s[key])}")
            out.extend("  " + " == ".join(p) for p in s[key])
    if s["bad_files"]:
        out.append(f"bad files (skipped): {len(s['bad_files'])}")
        out.extend(f"  {b['path']}: {b['reason']}" for b in s["bad_files"])
    if s["ignored_files"]:
        out.append(f"ignored (not images): {len(s['ignored_files'])}")
        out.extend(f"  {p}" for p in s["ignored_files"][:10])
    return "\n".join(out)


def _warn_dataset(ds) -> None:
    leaks = ds.leaks()
    if leaks:
        typer.echo(f"warning: {len(leaks)} test image(s) also appear in train/val (identical content), e.g. "
                   f"{leaks[0][1].path} == {leaks[0][0].path}; run `automl inspect` for the list.", err=True)
    if ds.bad_files:
        typer.echo(f"skipped {len(ds.bad_files)} undecodable file(s):", err=True)
        for b in ds.bad_files:
            typer.echo(f"  {b.path}: {b.reason}", err=True)


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point: user errors become one ``error:`` line and a non-zero exit."""
    try:
        app(args=argv, prog_name="automl")
    except AutomlError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished work is kept in the store and reused by the next run.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
