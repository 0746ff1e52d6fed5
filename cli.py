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
AUGMENT_HELP = "An augmenter (conventional, dcgan, sd-img2img, ...; `automl augmenters` lists them)."
RATIO_HELP = "Synthetic images per real image of each chosen class (default 1.0: doubles it), balance or full."
CLASSES_HELP = "Classes to augment: minority (default), all, or names a,b."
MIX_HELP = "real+synthetic (default) or synthetic-only."
REAL_FRACTION_HELP = "Keep this stratified share of the real training images (default 1.0)."
AUGMENT_PARAM_HELP = "An augmenter parameter KEY=VALUE (VALUE read as YAML: 0.1, true, text); repeatable."


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
    results = embed_dataset(  # resolves the names, the store's pretrained ones too
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
def pretrain(
    data: Path = typer.Argument(..., help=DATA_HELP + " Its train (and val) split is trained on; never its test split."),
    extractor: str = typer.Option("inception-v3", "--extractor", help="The Keras backbone to train (built in)."),
    weights: str = typer.Option(
        "imagenet", help="Starting weights: imagenet (Keras download and cache), none (random, seeded), or a file."),
    image_size: int = typer.Option(299, help="Input size in pixels (Keras minimums: 75, 71 for xception)."),
    epochs: int = typer.Option(10, help="Most epochs to train; early stopping on validation loss may stop sooner."),
    patience: int = typer.Option(3, help="Stop after this many epochs without a lower validation loss."),
    freeze_until: Optional[str] = typer.Option(
        None, help="Freeze the backbone's layers up to and including this one (e.g. mixed7 for inception-v3)."),
    name: Optional[str] = typer.Option(None, help="Saved as store/extractors/NAME.keras (default: EXTRACTOR-DATA)."),
    exclude: Optional[List[Path]] = typer.Option(
        None, "--exclude", help="A dataset whose test split must not be trained on (matching images are dropped); "
        "repeatable."),
    exclude_mode: str = typer.Option("drop", help="drop matching images (with a count), or refuse to train."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing pretrained extractor NAME."),
    batch_size: Optional[int] = typer.Option(None, help="Images per training step (default: 32 at 75 px, 16 at 299)."),
    learning_rate: Optional[float] = typer.Option(
        None, help="Peak learning rate of the cosine schedule (default: 1e-3 from random weights, else 1e-4)."),
    val_fraction: float = typer.Option(0.1, help="Validation share of train when the data has no val split."),
    store: Optional[Path] = typer.Option(None, help="Store folder (default: $AUTOML_STORE or ./store).",
                                         envvar="AUTOML_STORE"),
    seed: int = typer.Option(0, help="Seed of the validation split, the weights, augmentation and shuffling."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out undecodable files."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train a backbone with a temporary head on DATA and save it as an extractor: --extractors NAME."""
    from automl.pretrain import pretrain as run_pretrain
    from automl.report import table

    result = run_pretrain(
        data, extractor=extractor, weights=weights, image_size=image_size, epochs=epochs, patience=patience,
        freeze_until=freeze_until, name=name, exclude=exclude or (), exclude_mode=exclude_mode, overwrite=overwrite,
        batch_size=batch_size, learning_rate=learning_rate, val_fraction=val_fraction, store=store, seed=seed,
        skip_bad=skip_bad, progress=progress, log=typer.echo)
    rec = result.record
    typer.echo(table(["epoch", "loss", "acc", "val loss", "val acc", "lr"],
                     [[r["epoch"], round(r["loss"], 4), round(r["accuracy"], 3), round(r["val_loss"], 4),
                       round(r["val_accuracy"], 3), f"{r['learning_rate']:.2e}"] for r in rec["epochs"]]))
    typer.echo(f"best epoch {rec['best_epoch']}" + (" (stopped early)" if rec["stopped_early"] else "")
               + f"; saved {result.model_path} and {result.record_path.name}")
    typer.echo(f"use it: automl fit DATA --extractors {result.name}" + (f" --store {store}" if store else ""))


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


@app.command()
def fit(
    data: Optional[str] = typer.Argument(None, help=DATA_HELP + " Optional with --recipe."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="A recipe YAML; flags given override it."),
    extractors: Optional[List[str]] = typer.Option(None, "--extractors", "-e", help="Extractors to search over (default: all)."),
    heads: Optional[List[str]] = typer.Option(None, "--heads", help="Heads to search over (default: all)."),
    trials: Optional[int] = typer.Option(None, help="Search budget in finished trials (default 30)."),
    timeout: Optional[float] = typer.Option(None, help="Search budget in seconds."),
    metric: Optional[str] = typer.Option(None, help="CV metric: macro-f1 (default), accuracy, balanced-accuracy, roc-auc."),
    cv: Optional[int] = typer.Option(None, help="Cross-validation folds (default 5)."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default), none (random, seeded) or a weights file."),
    image_size: Optional[int] = typer.Option(None, help="Input size in pixels (default 299)."),
    precision: Optional[str] = typer.Option(None, help="auto (default), float32, bfloat16 or float16."),
    batch_size: Optional[int] = typer.Option(None, help="Images per model call (default: from the image size)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split, the search and the heads (default 0)."),
    test_fraction: Optional[float] = typer.Option(None, help="Test share when the data has no test split (default 0.2)."),
    store: Optional[str] = typer.Option(None, help="Store folder (default: $AUTOML_STORE or ./store)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: SQLite in the store)."),
    skip_bad: Optional[bool] = typer.Option(None, "--skip-bad/--no-skip-bad", help="Leave out undecodable files."),
    name: Optional[str] = typer.Option(None, help="A label for the run."),
    augment: Optional[str] = typer.Option(None, "--augment", "-a", help=AUGMENT_HELP),
    ratio: Optional[str] = typer.Option(None, help=RATIO_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    mix: Optional[str] = typer.Option(None, help=MIX_HELP),
    real_fraction: Optional[float] = typer.Option(None, help=REAL_FRACTION_HELP),
    augment_param: Optional[List[str]] = typer.Option(None, "--augment-param", "-p", help=AUGMENT_PARAM_HELP),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Search extractors x heads by CV on the training split, evaluate the test split once, save the run;
    with --augment, also the original-data baseline, side by side."""
    flags = dict(data=data, extractors=_split_names(extractors), heads=_split_names(heads), trials=trials,
                 timeout=timeout, metric=metric, cv=cv, weights=weights, image_size=image_size, precision=precision,
                 batch_size=batch_size, seed=seed, test_fraction=test_fraction, store=store, storage=storage,
                 skip_bad=skip_bad, name=name)
    resolved = _resolve_recipe(recipe, data, flags, augment, ratio, classes, mix, real_fraction, augment_param)
    _fit(resolved, progress)


@app.command()
def compare(
    data: Optional[str] = typer.Argument(None, help=DATA_HELP + " Optional with --recipe."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="A recipe YAML; flags given override it."),
    augment: Optional[str] = typer.Option(None, "--augment", "-a", help=AUGMENT_HELP + " Several: a,b,c."),
    repeats: Optional[int] = typer.Option(None, help="Seeds per variant (default 5; >= 6 can reach p < 0.05)."),
    ratio: Optional[str] = typer.Option(None, help=RATIO_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    mix: Optional[str] = typer.Option(None, help=MIX_HELP),
    real_fraction: Optional[float] = typer.Option(None, help=REAL_FRACTION_HELP),
    augment_param: Optional[List[str]] = typer.Option(None, "--augment-param", "-p", help=AUGMENT_PARAM_HELP),
    extractors: Optional[List[str]] = typer.Option(None, "--extractors", "-e", help="Extractors to search over."),
    heads: Optional[List[str]] = typer.Option(None, "--heads", help="Heads to search over (default: all)."),
    trials: Optional[int] = typer.Option(None, help="Search budget per fit in finished trials (default 30)."),
    timeout: Optional[float] = typer.Option(None, help="Search budget per fit in seconds."),
    metric: Optional[str] = typer.Option(None, help="CV metric, and the test metric of the verdict (default macro-f1)."),
    cv: Optional[int] = typer.Option(None, help="Cross-validation folds (default 5)."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default), none (random, seeded) or a weights file."),
    image_size: Optional[int] = typer.Option(None, help="Input size in pixels (default 299)."),
    seed: Optional[int] = typer.Option(None, help="First seed; repeat r uses seed + r (default 0)."),
    store: Optional[str] = typer.Option(None, help="Store folder (default: $AUTOML_STORE or ./store)."),
    name: Optional[str] = typer.Option(None, help="A label for the runs."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Does augmentation help? Fit the baseline and each variant over N seeds; medians, intervals, paired tests."""
    from automl.compare import compare as run_compare

    flags = dict(data=data, extractors=_split_names(extractors), heads=_split_names(heads), trials=trials,
                 timeout=timeout, metric=metric, cv=cv, weights=weights, image_size=image_size, seed=seed,
                 store=store, name=name, repeats=repeats)
    resolved = _resolve_recipe(recipe, data, flags, augment, ratio, classes, mix, real_fraction, augment_param)
    result = run_compare(resolved, progress=progress)
    typer.echo(result.text)
    typer.echo(f"\nsaved comparison {result.id} in {result.folder} (comparison.json: every run id, value and test)")


@app.command()
def augmenters() -> None:
    """The augmenters --augment accepts, with their parameters and defaults."""
    from automl.augment import AUGMENTERS

    for name in AUGMENTERS:
        cls = AUGMENTERS.get(name)
        typer.echo(f"{name}: {cls.summary}")
        for key, value in cls.defaults.items():
            typer.echo(f"    {key} = {value!r}")


def _resolve_recipe(recipe: Optional[Path], data: Optional[str], flags: dict, augment, ratio, classes, mix,
                    real_fraction, augment_param):
    """The recipe file (if any) with the flags given on top; the augment flags build its variants."""
    from automl.recipe import Recipe, load_recipe

    base = load_recipe(recipe) if recipe is not None else None
    if base is None and data is None:
        raise typer.BadParameter("give DATA or --recipe FILE", param_hint="DATA")
    flags["augment"] = _augment_flags(base.augment if base else None, augment, ratio, classes, mix, real_fraction,
                                      augment_param)
    return base.with_overrides(**flags) if base is not None else Recipe.from_flags(**flags)


def _augment_flags(variants, names, ratio, classes, mix, real_fraction, params) -> Optional[list]:
    """--augment a,b with the plan flags -> the recipe's ``augment`` list (None: keep the recipe's)."""
    import yaml

    plan = {}
    if ratio is not None:
        try:
            plan["ratio"] = float(ratio)
        except ValueError:
            plan["ratio"] = ratio
    if classes is not None:
        plan["classes"] = classes if classes in ("minority", "all") else _split_names([classes])
    for key, value in (("mix", mix), ("real_fraction", real_fraction)):
        if value is not None:
            plan[key] = value
    extra = {}
    for pair in params or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--augment-param")
        extra[key.strip()] = yaml.safe_load(value)
    if names:
        return [{"type": n, **plan, "params": dict(extra)} for n in _split_names([names])]
    if variants and (plan or extra):
        return [{**v.model_dump(), **plan, "params": {**v.params, **extra}} for v in variants]
    if plan or extra:
        raise typer.BadParameter("--ratio, --classes, --mix, --real-fraction and --augment-param need --augment "
                                 "NAME (or a recipe with `augment:`)", param_hint="--augment")
    return None


@app.command("run")
def run_recipe(
    recipe: Path = typer.Argument(..., help="A recipe YAML file."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run a recipe: the same as `automl fit --recipe FILE`."""
    from automl.recipe import load_recipe

    _fit(load_recipe(recipe), progress)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="A recipe YAML file.")) -> None:
    """Check a recipe and explain every problem; exits non-zero if there is one."""
    from automl.recipe import RecipeError, load_recipe

    try:
        resolved = load_recipe(recipe)
    except RecipeError as exc:
        typer.echo(f"{recipe}: {len(exc.problems)} problem(s)", err=True)
        for line in exc.problems:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(2)
    augment = ""
    if resolved.augment:
        augment = f"; augment {', '.join(v.describe() for v in resolved.augment)}"
        if len(resolved.augment) > 1:
            augment += f" (automl compare, {resolved.repeats} repeats)"
    typer.echo(f"{recipe}: valid ({', '.join(resolved.extractors)} x {', '.join(resolved.heads)}; "
               f"data {resolved.data}{augment})")


@app.command()
def predict(
    run: str = typer.Argument(..., help="Run id (or a unique prefix, or its folder)."),
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per line."),
    store: Optional[Path] = typer.Option(None, help="Store folder (default: $AUTOML_STORE or ./store).",
                                         envvar="AUTOML_STORE"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out undecodable files and list them."),
    batch_size: Optional[int] = typer.Option(None, help="Images per model call."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Class and probabilities for each image, with a saved run's extractor and head."""
    from automl.pipeline import predict as run_predict
    from automl.report import table
    from automl.store import Store

    rows, bad = run_predict(run, [str(p) for p in images], Store(store), skip_bad=skip_bad, batch_size=batch_size,
                            progress=progress)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
    else:
        classes = list(rows[0]["probabilities"]) if rows else []
        typer.echo(table(["image", "class"] + [f"p({c})" for c in classes],
                         [[r["path"], r["class"]] + [round(v, 4) for v in r["probabilities"].values()] for r in rows]))
    for b in bad:
        typer.echo(f"skipped {b.path}: {b.reason}", err=True)


@app.command()
def runs(store: Optional[Path] = typer.Option(None, help="Store folder.", envvar="AUTOML_STORE")) -> None:
    """List the runs in the store, oldest first."""
    from automl.report import table
    from automl.runs import list_runs
    from automl.store import Store

    runs_dir = Store(store).runs_dir
    records = list_runs(runs_dir)
    if not records:
        typer.echo(f"no runs in {runs_dir}")
        return
    typer.echo(table(["run", "name", "data", "augment", "best pipeline", "cv", "test acc", "test F1", "test AUROC"], [
        [r["id"], r.get("name") or "", _short_path(r["data"]), (r.get("augment") or {}).get("variant", ""),
         f"{r['best']['extractor']} + {r['best']['head']}",
         round(r["best"]["cv_score"], 4), round(r["test"]["accuracy"], 4), round(r["test"]["f1_macro"], 4),
         None if r["test"]["auroc"] is None else round(r["test"]["auroc"], 4)] for r in records]))


@app.command()
def show(
    run: str = typer.Argument(..., help="Run id (or a unique prefix, or its folder)."),
    store: Optional[Path] = typer.Option(None, help="Store folder.", envvar="AUTOML_STORE"),
) -> None:
    """Everything about one run: data, split, search, best pipeline, test metrics."""
    from automl.runs import find_run
    from automl.store import Store

    folder = find_run(Store(store).runs_dir, run)
    record = json.loads((folder / "run.json").read_text())
    report = json.loads((folder / "metrics.json").read_text())
    board = json.loads((folder / "leaderboard.json").read_text())
    typer.echo(_run_text(record, report, board, folder))


def _fit(recipe, progress: bool) -> None:
    from automl.pipeline import fit as run_fit
    from automl.report import table

    result = run_fit(recipe, progress=progress)
    for note in result.notes:
        typer.echo(f"warning: {note}", err=True)
    rows = [(r.key.extractor, r.images, r.cache_hits, r.computed, r.images_per_s) for r in result.embeddings]
    typer.echo("embeddings (the last row: the test split, with the chosen extractor only)")
    typer.echo(table(["extractor", "images", "cache hits", "computed", "images/s"], rows))
    typer.echo("")
    report = json.loads((result.run_dir / "metrics.json").read_text())
    typer.echo(_run_text(result.record, report, result.leaderboard, result.run_dir))
    if result.baseline is not None:
        typer.echo("\n" + _side_by_side(result.baseline.record, result.record))
        typer.echo(f"\nsaved runs {result.baseline.run_id} (original data) and {result.run_id} (augmented): "
                   f"`automl show RUN`, `automl predict RUN IMAGES...`")
        return
    typer.echo(f"\nsaved run {result.run_id}: `automl show {result.run_id}`, "
               f"`automl predict {result.run_id} IMAGES...`")


def _side_by_side(baseline: dict, augmented: dict) -> str:
    """The original-data run and the augmented run on the same test split, and each difference."""
    from automl.evaluate import HEADLINE
    from automl.report import table

    aug = augmented["augment"]
    rows = []
    for label, key in HEADLINE:
        a, b = baseline["test"][key], augmented["test"][key]
        diff = None if a is None or b is None else round(b - a, 4)
        rows.append([label, None if a is None else round(a, 4), None if b is None else round(b, 4),
                     diff if diff is None or diff <= 0 else f"+{diff}"])
    made = ", ".join(f"{c} +{n}" for c, n in aug["synthetic_per_class"].items())
    lines = [
        f"augmentation {aug['variant']}: {made} synthetic ({aug['generated']} generated now, {aug['reused']} reused "
        f"from {aug['folder']}); trained on {augmented['train_images']['fitted_on']} images "
        f"({aug['mix']}, real fraction {aug['real_fraction']:g})",
        f"test split ({augmented['test']['n']} images), one seed ({augmented['seed']}): for intervals and a "
        "significance test over seeds, run `automl compare` with --repeats",
        table(["metric", "original", "augmented", "difference"], rows),
        f"best pipelines: original {baseline['best']['pipeline']}; augmented {augmented['best']['pipeline']}",
    ]
    return "\n".join(lines)


def _run_text(record: dict, report: dict, board: list[dict], folder: Path) -> str:
    from automl.evaluate import HEADLINE
    from automl.report import table

    metric = record["metric"]
    trials = ", ".join(f"{n} {state}" for state, n in sorted(record["trials"].items()))
    lines = [
        f"run {record['id']}" + (f" ({record['name']})" if record.get("name") else "") + f"  {folder}",
        f"data   {record['data']} ({record['layout']}); classes {', '.join(record['classes'])}",
        f"split  {record['split']}; " + ", ".join(f"{s} {sum(c.values())}" for s, c in record["counts"].items()),
        f"search {trials}; {record['cv']}-fold CV {metric} on the training split; study {record['study']['name']}",
        *_augment_lines(record),
        "",
        table(["rank", f"cv {metric}", "pipeline", "reference"],
              [[r["rank"], round(r["cv"], 4), r["pipeline"], r["reference"] or ""] for r in board]),
        "",
        f"best: {record['best']['pipeline']}",
        f"test split ({report['n']} images, evaluated once):",
        table(["metric", "value"], [[label, None if report[key] is None else round(report[key], 4)]
                                    for label, key in HEADLINE]),
        "",
        table(["class", "precision", "recall", "F1", "support"],
              [[c, round(v["precision"], 4), round(v["recall"], 4), round(v["f1"], 4), v["support"]]
               for c, v in report["per_class"].items()]),
        "confusion matrix (rows: true, columns: predicted): " + json.dumps(report["confusion_matrix"]),
    ]
    return "\n".join(lines)


def _augment_lines(record: dict) -> list[str]:
    aug = record.get("augment")
    if not aug:
        return []
    made = ", ".join(f"{c} +{n}" for c, n in aug["synthetic_per_class"].items())
    return [f"augment {aug['variant']} ({aug['mix']}): {made} synthetic images in {aug['folder']}; "
            f"baseline run {record.get('baseline_run')}"]


def _short_path(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


@app.command("demo-data")
def demo_data(
    folder: Path = typer.Argument(..., help="Where to write the dataset (created; must not hold one already)."),
    per_class: int = typer.Option(40, min=4, max=170, help="Images per class (a quarter go to test/)."),
    classes: int = typer.Option(10, min=2, max=10, help="How many digit classes (0, 1, ...)."),
    size: int = typer.Option(32, min=8, help="Image side in pixels (the scans are 8x8)."),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same images."),
) -> None:
    """Write an offline demo dataset: scikit-learn's bundled handwritten digits as train/ and test/ folders."""
    from automl.demo import make_demo_dataset
    from automl.errors import DataError

    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder} is not empty; pass a new folder for the demo dataset.")
    make_demo_dataset(folder, per_class=per_class, size=size, classes=classes, seed=seed)
    typer.echo(f"wrote {classes * per_class} digit images ({classes} classes) to {folder}/train and {folder}/test")


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
