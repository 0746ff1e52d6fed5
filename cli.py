"""The ``automl`` command line (also what a container runs).

Commands only: each parses its flags, calls the library and echoes the text ``automl.report`` renders.
Flags that several commands take are declared once below, their help's defaults read from the recipe
model. Imports stay light at module level: TensorFlow, torch and diffusers load only inside the
commands that need them, so ``automl --help`` answers at once.
"""

from __future__ import annotations

import codecs
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from automl import __version__
from automl._files import json_text
from automl.augment.plan import AugmentSpec
from automl.errors import AutomlError
from automl.evaluate import METRICS
from automl.recipe import DEFAULT_IMAGE_SIZE, Recipe

app = typer.Typer(
    name="automl",
    help="AutoML for image classification on small, hard datasets: frozen CNN embeddings, shallow "
    "heads, and whether synthetic images help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DATA_HELP = "A folder of class folders, a folder with train/ and test/ (optionally val/), or a MedMNIST-style .npz."
STORE_HELP = "Store folder (default: $AUTOML_STORE or ./store)."
WEIGHTS_HELP = "imagenet (Keras download and cache), none (random, seeded), or a weights file."


def _default(field: str, model=Recipe) -> str:
    """A recipe key's default, as help text shows it."""
    value = model.model_fields[field].default
    return ", ".join(value) if isinstance(value, (list, tuple)) else str(value)


# --- options many commands take, each declared once ------------------------------------------------
# A command gives the default: a recipe override's is None (keep the recipe's value, or its default).

StoreDir = Annotated[Optional[Path], typer.Option(help=STORE_HELP, envvar="AUTOML_STORE")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Leave out undecodable files and list them.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per model call (default: from the image size).")]
ImageSize = Annotated[int, typer.Option(help="Input size in pixels (Keras minimums: 75, 71 for xception).")]
RunRef = Annotated[str, typer.Argument(
    help="Run id in the store (or a unique prefix, or its folder in the store's runs/); with --run-dir, a run folder.")]
RunDir = Annotated[bool, typer.Option(
    "--run-dir", help="RUN is a run folder outside the store (copied, downloaded). Its model is still loaded as data "
    "only; predictions cache embeddings in --store.")]
RecipeFile = Annotated[Path, typer.Argument(help="A recipe YAML file.")]

# The flags of `fit` and `compare`, which override a recipe's keys.
DataOrRecipe = Annotated[Optional[str], typer.Argument(help=DATA_HELP + " Optional with --recipe.")]
RecipeOption = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="A recipe YAML; flags given override it.")]
SearchExtractors = Annotated[Optional[List[str]], typer.Option(
    "--extractors", "-e", help=f"Extractors to search over (default: {_default('extractors')}).")]
SearchHeads = Annotated[Optional[List[str]], typer.Option(
    help=f"Heads to search over (default: {_default('heads')}).")]
Trials = Annotated[Optional[int], typer.Option(
    help=f"Search budget per fit in finished trials (default {_default('trials')}).")]
Timeout = Annotated[Optional[float], typer.Option(help="Search budget per fit in seconds.")]
Workers = Annotated[Optional[int], typer.Option(
    help="Search processes on this machine sharing the study (default 1); with a server --storage the same "
         "command on other machines joins it, and one of them writes the run.")]
Metric = Annotated[Optional[str], typer.Option(
    help=f"CV metric, and the test metric of compare's verdict: {', '.join(METRICS)} (default {_default('metric')}).")]
Cv = Annotated[Optional[int], typer.Option(help=f"Cross-validation folds (default {_default('cv')}).")]
WeightsOverride = Annotated[Optional[str], typer.Option(
    help=f"imagenet, none (random, seeded) or a weights file (default {_default('weights')}).")]
ImageSizeOverride = Annotated[Optional[int], typer.Option(
    help=f"Input size in pixels (default {_default('image_size')}).")]
StoreOverride = Annotated[Optional[str], typer.Option(help=STORE_HELP)]
Name = Annotated[Optional[str], typer.Option(help="A label for the run(s).")]
Augment = Annotated[Optional[str], typer.Option(
    "--augment", "-a", help="An augmenter (conventional, dcgan, sd-img2img, ...; `automl augmenters` lists them); "
    "compare takes several: a,b,c.")]
Ratio = Annotated[Optional[str], typer.Option(
    help="Synthetic images per real image of each chosen class (1.0 doubles it), balance or full "
    f"(default {_default('ratio', AugmentSpec)}).")]
Classes = Annotated[Optional[str], typer.Option(
    "--classes", help=f"Classes to augment: minority, all, or names a,b (default {_default('classes', AugmentSpec)}).")]
Mix = Annotated[Optional[str], typer.Option(
    help=f"real+synthetic or synthetic-only (default {_default('mix', AugmentSpec)}).")]
RealFraction = Annotated[Optional[float], typer.Option(
    help="Keep this stratified share of the real training images "
    f"(default {_default('real_fraction', AugmentSpec)}).")]
PrecisionOverride = Annotated[Optional[str], typer.Option(
    help=f"auto, float32, bfloat16 or float16 (default {_default('precision')}).")]
AugmentParam = Annotated[Optional[List[str]], typer.Option(
    "--augment-param", "-p", help="An augmenter parameter KEY=VALUE (VALUE read as YAML: 0.1, true, text); "
    "repeatable.")]
AugmentFilter = Annotated[Optional[List[str]], typer.Option(
    "--filter", help="Which synthetic images train, KEY=VALUE or KEY (true): drop_copies, selective=0.8, "
    "control, pool=3, extractor=NAME; repeatable.")]


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
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    extractors: Annotated[Optional[List[str]], typer.Option(
        "--extractors", "-e", help="Comma-separated extractor names (default: all).")] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    image_size: ImageSize = DEFAULT_IMAGE_SIZE,
    batch_size: BatchSize = None,
    precision: Annotated[str, typer.Option(
        help="auto (fastest the hardware supports: bfloat16 on AMX/AVX-512-BF16 CPUs, float16 on GPUs, else "
        "float32), float32, bfloat16 or float16.")] = "auto",
    store: StoreDir = None,
    seed: Annotated[int, typer.Option(help="Seed for random weights (--weights none).")] = 0,
    skip_bad: SkipBad = False,
    progress: Progress = True,
) -> None:
    """Embed every image with the frozen extractors, reusing cached embeddings."""
    from automl.data import load_dataset
    from automl.pipeline import embed_dataset
    from automl.report import dataset_notes, embed_table, skipped_files_text
    from automl.store import Store

    dataset = load_dataset(data, skip_bad=skip_bad)
    for note in dataset_notes(dataset, bad_files=False):
        typer.echo(f"warning: {note}", err=True)
    if dataset.bad_files:
        typer.echo(skipped_files_text(dataset.bad_files), err=True)
    results = embed_dataset(  # resolves the names, the store's pretrained ones too
        dataset, Store(store), _split_names(extractors), weights=weights, image_size=image_size,
        precision=precision, seed=seed, batch_size=batch_size, skip_bad=skip_bad, progress=progress)
    typer.echo(embed_table(results))
    bad = [b for r in results for b in r.bad_files]
    if bad:
        typer.echo(skipped_files_text(bad), err=True)


@app.command()
def pretrain(
    data: Annotated[Path, typer.Argument(
        help=DATA_HELP + " Its train (and val) split is trained on; never its test split.")],
    extractor: Annotated[str, typer.Option(
        "--extractor", help="The Keras backbone to train (built in).")] = "inception-v3",
    weights: Annotated[str, typer.Option(
        help="Starting weights: " + WEIGHTS_HELP + " Or a pretrained extractor NAME in the store (or its .keras "
        "file), to continue its training: real, then fine-tuned on synthetic.")] = "imagenet",
    image_size: ImageSize = DEFAULT_IMAGE_SIZE,
    epochs: Annotated[int, typer.Option(
        help="Most epochs to train; early stopping on validation loss may stop sooner.")] = 10,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a lower validation loss.")] = 3,
    freeze_until: Annotated[Optional[str], typer.Option(
        help="Freeze the backbone's layers up to and including this one (e.g. mixed7 for inception-v3).")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Saved as store/extractors/NAME.keras (default: EXTRACTOR-DATA; with --augment, "
        "EXTRACTOR-DATA-AUGMENTER).")] = None,
    exclude: Annotated[Optional[List[Path]], typer.Option(
        "--exclude", help="A dataset whose test split must not be trained on (matching images are dropped); "
        "repeatable.")] = None,
    exclude_mode: Annotated[str, typer.Option(
        help="drop matching images (with a count), or refuse to train.")] = "drop",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing pretrained extractor NAME.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Images per training step (default: 32 at 75 px, 16 at 299).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(
        help="Peak learning rate of the cosine schedule (default: 1e-3 from random weights, else 1e-4).")] = None,
    val_fraction: Annotated[float, typer.Option(
        help="Validation share of train when the data has no val split.")] = 0.1,
    store: StoreDir = None,
    seed: Annotated[int, typer.Option(
        help="Seed of the validation split, the weights, augmentation and shuffling.")] = 0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out undecodable files.")] = False,
    augment: Augment = None,
    ratio: Ratio = None,
    classes: Classes = None,
    mix: Mix = None,
    real_fraction: RealFraction = None,
    augment_param: AugmentParam = None,
    augment_filter: AugmentFilter = None,
    progress: Progress = True,
) -> None:
    """Train a backbone with a temporary head on DATA and save it as an extractor: --extractors NAME.
    With --augment, on real + synthetic images of DATA's training split (or synthetic only: --mix)."""
    from automl.pretrain import describe_synthetic
    from automl.pretrain import pretrain as run_pretrain
    from automl.report import pretrain_text

    plans = _augment_flags(None, augment, ratio, classes, mix, real_fraction, augment_param, augment_filter)
    if plans is not None and len(plans) > 1:
        raise typer.BadParameter(f"pretrain takes one augmenter; got {len(plans)} ({augment}). Pretrain once per "
                                 "augmenter, each with its own --name.", param_hint="--augment")
    result = run_pretrain(
        data, extractor=extractor, weights=weights, image_size=image_size, epochs=epochs, patience=patience,
        freeze_until=freeze_until, name=name, exclude=exclude or (), exclude_mode=exclude_mode,
        augment=plans[0] if plans else None, overwrite=overwrite, batch_size=batch_size, learning_rate=learning_rate,
        val_fraction=val_fraction, store=store, seed=seed, skip_bad=skip_bad, progress=progress, log=typer.echo)
    typer.echo("\n".join([pretrain_text(result, store), *describe_synthetic(result.record)]))


@app.command()
def inspect(
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="List undecodable files instead of failing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Classes, counts per split, image sizes and modes, duplicates and bad files."""
    from automl.data import load_dataset
    from automl.report import dataset_summary, dataset_text

    summary = dataset_summary(load_dataset(data, skip_bad=skip_bad))
    typer.echo(json_text(summary) if as_json else dataset_text(summary))


@app.command()
def fit(
    data: DataOrRecipe = None,
    recipe: RecipeOption = None,
    extractors: SearchExtractors = None,
    heads: SearchHeads = None,
    trials: Trials = None,
    timeout: Timeout = None,
    metric: Metric = None,
    cv: Cv = None,
    weights: WeightsOverride = None,
    image_size: ImageSizeOverride = None,
    precision: PrecisionOverride = None,
    batch_size: BatchSize = None,
    seed: Annotated[Optional[int], typer.Option(
        help=f"Seed of the split, the search and the heads (default {_default('seed')}).")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(
        help=f"Test share when the data has no test split (default {_default('test_fraction')}).")] = None,
    store: StoreOverride = None,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage URL (default: SQLite in the store).")] = None,
    workers: Workers = None,
    skip_bad: Annotated[Optional[bool], typer.Option(
        "--skip-bad/--no-skip-bad", help="Leave out undecodable files.")] = None,
    name: Name = None,
    augment: Augment = None,
    ratio: Ratio = None,
    classes: Classes = None,
    mix: Mix = None,
    real_fraction: RealFraction = None,
    augment_param: AugmentParam = None,
    augment_filter: AugmentFilter = None,
    progress: Progress = True,
) -> None:
    """Search extractors x heads by CV on the training split, evaluate the test split once, save the run;
    with --augment, also the original-data baseline, side by side."""
    _fit(_resolve_recipe(dict(locals())), progress)


@app.command()
def compare(
    data: DataOrRecipe = None,
    recipe: RecipeOption = None,
    augment: Augment = None,
    repeats: Annotated[Optional[int], typer.Option(
        help=f"Seeds per variant (default {_default('repeats')}; >= 6 can reach p < 0.05).")] = None,
    ratio: Ratio = None,
    classes: Classes = None,
    mix: Mix = None,
    real_fraction: RealFraction = None,
    augment_param: AugmentParam = None,
    augment_filter: AugmentFilter = None,
    extractors: SearchExtractors = None,
    heads: SearchHeads = None,
    trials: Trials = None,
    timeout: Timeout = None,
    metric: Metric = None,
    cv: Cv = None,
    weights: WeightsOverride = None,
    image_size: ImageSizeOverride = None,
    seed: Annotated[Optional[int], typer.Option(
        help=f"First seed; repeat r uses seed + r (default {_default('seed')}).")] = None,
    store: StoreOverride = None,
    name: Name = None,
    progress: Progress = True,
) -> None:
    """Does augmentation help? Fit the baseline and each variant over N seeds; medians, intervals, paired tests."""
    resolved = _resolve_recipe(dict(locals()))
    from automl.api import compare as run_compare

    result = run_compare(recipe=resolved, progress=progress)
    typer.echo(result.text)
    typer.echo(f"\nsaved comparison {result.id} in {result.folder} (comparison.json: every run id, value and test)")
    for note in result.notes:
        typer.echo(f"warning: {note}", err=True)
    if result.report is not None:
        typer.echo(f"report: {result.report}")


@app.command()
def augmenters() -> None:
    """The augmenters --augment accepts, with their parameters and defaults."""
    from automl.augment import AUGMENTERS
    from automl.report import augmenters_text

    typer.echo(augmenters_text(AUGMENTERS))


@app.command()
def quality(
    data: DataOrRecipe = None,
    recipe: RecipeOption = None,
    augment: Augment = None,
    ratio: Ratio = None,
    classes: Classes = None,
    mix: Mix = None,
    real_fraction: RealFraction = None,
    augment_param: AugmentParam = None,
    augment_filter: AugmentFilter = None,
    extractor: Annotated[Optional[str], typer.Option(
        "--extractor", "-e", help="The extractor whose features the numbers are computed in: any --extractors "
        "name, file:PATH included (default: the recipe's first extractor). FID from different extractors is not "
        "comparable.")] = None,
    weights: WeightsOverride = None,
    image_size: ImageSizeOverride = None,
    precision: PrecisionOverride = None,
    batch_size: BatchSize = None,
    seed: Annotated[Optional[int], typer.Option(
        help=f"Seed of the split, the augmenter and the bootstrap (default {_default('seed')}).")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(
        help=f"Test share when the data has no test split (default {_default('test_fraction')}).")] = None,
    store: StoreOverride = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list, a record per variant.")] = False,
    progress: Progress = True,
) -> None:
    """How close are a variant's synthetic images to the real training images, and are they copies? FID, KID,
    precision/recall, density/coverage and near-copies, per class and overall."""
    flags = dict(locals())
    as_json, name = flags.pop("as_json"), flags.pop("extractor")
    _check_augmenters(augment)
    resolved = _resolve_recipe({**flags, "extractors": [name] if name else None, "heads": None})
    if not resolved.augment:
        raise typer.BadParameter("give the augmentation variant to measure: --augment NAME (`automl augmenters` "
                                 "lists them), or a recipe with `augment:`", param_hint="--augment")
    from automl.pipeline import quality as measure_variants
    from automl.quality import quality_text

    records = measure_variants(resolved, progress=progress)
    typer.echo(json_text(records) if as_json else "\n\n".join(quality_text(r) for r in records))


def _check_augmenters(names: Optional[str]) -> None:
    """Each --augment name registered; else the flag and the valid names (the recipe would name its own field)."""
    from automl.augment import AUGMENTERS
    from automl.registry import canonical

    for name in _split_names([names]) if names else []:
        if canonical(name) not in AUGMENTERS:
            raise typer.BadParameter(f"unknown augmenter {name!r}; valid names: {', '.join(AUGMENTERS.names())}",
                                     param_hint="--augment")


def _resolve_recipe(flags: dict) -> Recipe:
    """The recipe file (if any) with the flags given on top. ``flags``: a command's parameters by name
    (its ``locals()`` on entry): ``recipe`` (the file), ``progress``, the augment flags (they build the
    variants), and every other one a recipe key, None where not given."""
    from automl.recipe import load_recipe

    flags = dict(flags)
    recipe, data = flags.pop("recipe"), flags["data"]
    flags.pop("progress")
    plan = [flags.pop(key) for key in ("augment", "ratio", "classes", "mix", "real_fraction", "augment_param",
                                       "augment_filter")]
    base = load_recipe(recipe) if recipe is not None else None
    if base is None and data is None:
        raise typer.BadParameter("give DATA or --recipe FILE", param_hint="DATA")
    flags["extractors"], flags["heads"] = _split_names(flags["extractors"]), _split_names(flags["heads"])
    flags["augment"] = _augment_flags(base.augment if base else None, *plan)
    return base.with_overrides(**flags) if base is not None else Recipe.from_flags(**flags)


def _augment_flags(variants, names, ratio, classes, mix, real_fraction, params, filter_=None) -> Optional[list]:
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
    for pair in filter_ or []:
        key, sep, value = pair.partition("=")
        if not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE or KEY, got {pair!r}", param_hint="--filter")
        plan.setdefault("filter", {})[key.strip()] = yaml.safe_load(value) if sep else True
    if names:
        return [{"type": n, **plan, "params": dict(extra)} for n in _split_names([names])]
    if variants and (plan or extra):
        return [{**v.model_dump(exclude_none=True), **plan, "params": {**v.params, **extra}} for v in variants]
    if plan or extra:
        raise typer.BadParameter("--ratio, --classes, --mix, --real-fraction, --augment-param and --filter need "
                                 "--augment NAME (or a recipe with `augment:`)", param_hint="--augment")
    return None


@app.command("run")
def run_recipe(recipe: RecipeFile, progress: Progress = True) -> None:
    """Run a recipe: the same as `automl fit --recipe FILE`."""
    from automl.recipe import load_recipe

    _fit(load_recipe(recipe), progress)


@app.command()
def validate(recipe: RecipeFile) -> None:
    """Check a recipe and explain every problem; exits non-zero if there is one."""
    from automl.recipe import RecipeError, load_recipe
    from automl.report import recipe_problems_text, recipe_text

    try:
        resolved = load_recipe(recipe)
    except RecipeError as exc:
        typer.echo(recipe_problems_text(recipe, exc.problems), err=True)
        raise typer.Exit(2)
    typer.echo(recipe_text(recipe, resolved))


@app.command()
def predict(
    run: RunRef,
    images: Annotated[List[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per line.")] = False,
    store: StoreDir = None,
    run_dir: RunDir = False,
    skip_bad: SkipBad = False,
    batch_size: BatchSize = None,
    progress: Progress = True,
) -> None:
    """Class and probabilities for each image, with a saved run's extractor and head."""
    from automl.api import load_run
    from automl.report import predict_table

    saved = load_run(run, store=store, run_dir=run_dir)
    rows, bad = saved.predict_with_skipped(images, skip_bad=skip_bad, batch_size=batch_size, progress=progress)
    if as_json:
        for row in rows:
            typer.echo(json_text(row, indent=None))
    else:
        typer.echo(predict_table(rows))
    for b in bad:
        typer.echo(f"skipped {b.path}: {b.reason}", err=True)


@app.command()
def explain(
    run: RunRef,
    images: Annotated[Optional[List[Path]], typer.Argument(
        help="Image files and/or folders (searched recursively); optional with --synthetic.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Folder for the maps (default: explain/ in the run's folder, which its report "
        "shows).")] = None,
    target: Annotated[Optional[str], typer.Option(
        "--class", help="Map the evidence for this class (default: each image's predicted class; the --synthetic "
        "grid maps each image for its own class).")] = None,
    synthetic: Annotated[int, typer.Option(
        help="Also map N real and N synthetic training images per augmented class of an augmented run, each for its "
             "own class (the report's grid of real vs synthetic).")] = 0,
    method: Annotated[str, typer.Option(
        help="auto (CAM for a linear head, integrated gradients for the others, occlusion where the extractor "
             "gives no feature map: TFLite files, SavedModels), grad-cam, integrated-gradients or "
             "occlusion.")] = "auto",
    store: StoreDir = None,
    run_dir: RunDir = False,
    skip_bad: SkipBad = False,
    progress: Progress = True,
) -> None:
    """Where each image holds the evidence for its class: a heat map over it (PNG) per image."""
    from automl.api import load_run
    from automl.attribution import explain_run
    from automl.report import table

    saved = load_run(run, store=store, run_dir=run_dir)
    result = explain_run(saved.folder, images or [], out=out, target=target, synthetic=synthetic, method=method,
                         skip_bad=skip_bad, progress=progress)
    typer.echo(table(["image", "predicted", "p", "map of", "method", "file"],
                     [[r.image if r.kind == "image" else f"{r.kind} {r.row}: {r.image}", r.predicted,
                       round(r.probability, 4), r.explained, r.method + (" (empty)" if r.empty else ""), r.png]
                      for r in result.rows], align="llrlll"))
    typer.echo(f"wrote {len(result.rows)} map(s) to {result.folder} (overlay .png, map .npy, explain.json)")
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    for b in result.skipped:
        typer.echo(f"skipped {b.path}: {b.reason}", err=True)
    if out is None:
        typer.echo(f"`automl report {saved.id}` shows them in the run's page")


@app.command()
def runs(store: StoreDir = None) -> None:
    """List the runs in the store, oldest first."""
    from automl.report import runs_table
    from automl.runs import list_runs
    from automl.store import Store

    runs_dir = Store(store).runs_dir
    broken: list = []
    records = list_runs(runs_dir, broken=broken)
    typer.echo(runs_table(records) if records else f"no runs in {runs_dir}")
    for error in broken:  # the others are listed; each broken one is named, with the fix
        typer.echo(f"warning: {error}", err=True)


@app.command()
def show(run: RunRef, store: StoreDir = None, run_dir: RunDir = False) -> None:
    """Everything about one run: data, split, search, best pipeline, test metrics."""
    from automl.api import load_run
    from automl.report import run_text

    typer.echo(run_text(load_run(run, store=store, run_dir=run_dir)))


@app.command()
def report(
    ref: Annotated[str, typer.Argument(
        metavar="RUN_OR_COMPARISON", help="A run or comparison id in the store (or a unique prefix, or its folder).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the page here (default: report.html in the run's or comparison's folder).")] = None,
    store: StoreDir = None,
) -> None:
    """Write a run's or a comparison's report: one self-contained HTML page (images inside, nothing from the network)."""
    from automl.report.pages import write_report

    kind, path = write_report(ref, store=store, out=out)
    typer.echo(f"wrote the {kind} report {path}")


store_app = typer.Typer(help="Look after the store: check it, repair it.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("check")
def store_check(
    repair: Annotated[bool, typer.Option(
        "--repair", help="Move damaged shards and broken runs aside (never deleting them), remove temporaries of "
        "dead processes, fail trials their process left RUNNING.")] = False,
    store: StoreDir = None,
) -> None:
    """Verify shards, runs, generated images, temporaries and the study; exit 1 while a problem remains."""
    from automl.report import store_check_text
    from automl.store import Store
    from automl.store_check import check_store

    result = check_store(Store(store), repair=repair)
    typer.echo(store_check_text(result))
    if not result.ok:
        raise typer.Exit(1)


review_app = typer.Typer(help="A blinded review: can an expert tell a run's synthetic images from its real ones?",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("make")
def review_make(
    run: Annotated[str, typer.Argument(
        metavar="RUN", help="An augmented run's id in the store (or a unique prefix, or its folder in the store's "
        "runs/).")],
    per_class: Annotated[int, typer.Option(
        "--per-class", min=1, help="Real and synthetic images per augmented class (fewer where the run has fewer).")],
    seed: Annotated[int, typer.Option(help="Seed of which images are picked, their order and their ids.")] = 0,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Folder for sheet.html and answers.csv (default: ./review-<sheet id>).")] = None,
    size: Annotated[int, typer.Option(
        min=16, max=1024, help="Every image is shown at SIZE x SIZE pixels, real and synthetic alike.")] = 256,
    store: StoreDir = None,
) -> None:
    """A blinded HTML sheet of shuffled real and synthetic images and a CSV to fill in; the key stays in the store."""
    from automl.api import load_run
    from automl.review import make

    saved = load_run(run, store=store)
    sheet = make(saved, saved.store, per_class=per_class, seed=seed, out=out, size=size)
    counts = ", ".join(f"{c}: {n['real']} real + {n['synthetic']} synthetic" for c, n in sheet.counts.items())
    typer.echo(f"wrote review sheet {sheet.id} of run {sheet.run}: {sheet.n} images ({counts})")
    typer.echo(f"  {sheet.folder / 'sheet.html'}   the images, for the readers")
    typer.echo(f"  {sheet.folder / 'answers.csv'}  one copy per reader: real or synthetic per id, saved as READER.csv")
    typer.echo(f"key (keep it from the readers): {sheet.key}")
    typer.echo("score the filled copies: automl review score alice.csv bob.csv ...")
    for note in sheet.notes:
        typer.echo(f"note: {note}", err=True)


@review_app.command("score")
def review_score(
    answers: Annotated[List[Path], typer.Argument(
        metavar="CSV", help="Filled answers CSVs of one sheet, one per reader (named by the file's stem, or its "
        "reader column).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as one JSON object.")] = False,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Score the answered images only; the unanswered are counted.")] = False,
    store: StoreDir = None,
) -> None:
    """Each reader's accuracy, sensitivity, specificity (95 % Wilson intervals) and the readers' Cohen's kappa."""
    from automl.review import score, score_text
    from automl.store import Store

    result = score(answers, Store(store), allow_missing=allow_missing)
    typer.echo(json_text(result) if as_json else score_text(result))


def _fit(recipe, progress: bool) -> None:
    from automl.api import fit as run_fit
    from automl.report import fit_text

    run = run_fit(recipe=recipe, progress=progress)
    for note in run.notes:
        typer.echo(f"warning: {note}", err=True)
    typer.echo(fit_text(run))


@app.command("demo-data")
def demo_data(
    folder: Annotated[Path, typer.Argument(
        help="Where to write the dataset (created; must not hold one already).")],
    per_class: Annotated[int, typer.Option(min=4, max=170, help="Images per class (a quarter go to test/).")] = 40,
    classes: Annotated[int, typer.Option(min=2, max=10, help="How many digit classes (0, 1, ...).")] = 10,
    size: Annotated[int, typer.Option(min=8, help="Image side in pixels (the scans are 8x8).")] = 32,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same images.")] = 0,
) -> None:
    """Write an offline demo dataset: scikit-learn's bundled handwritten digits as train/ and test/ folders."""
    from automl.demo import make_demo_dataset
    from automl.errors import DataError

    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder} is not empty; pass a new folder for the demo dataset.")
    make_demo_dataset(folder, per_class=per_class, size=size, classes=classes, seed=seed)
    typer.echo(f"wrote {classes * per_class} digit images ({classes} classes) to {folder}/train and {folder}/test")


# --- the service -------------------------------------------------------------------------------------

QueueUrl = Annotated[Optional[str], typer.Option(
    "--queue", envvar="AUTOML_QUEUE", help="Job queue URL: sqlite:///FILE (default: the store's queue.db) or "
    "redis://HOST:PORT/DB.")]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    store: StoreDir = None,
    queue: QueueUrl = None,
    workers: Annotated[int, typer.Option(
        help="Also run a worker beside the server (one machine) running this many jobs at once; 0: start "
        "workers with `automl worker`.")] = 0,
    token_file: Annotated[Optional[Path], typer.Option(
        help="File holding the API token clients send as 'Authorization: Bearer TOKEN' (else $AUTOML_TOKEN).")] = None,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="No token (only on a loopback --host).")] = False,
    allow_root: Annotated[Optional[List[Path]], typer.Option(
        "--allow-root", help="A server folder clients may register datasets from and name files under; "
        "repeatable.")] = None,
    max_upload: Annotated[int, typer.Option(help="Largest request body in MiB.")] = 2048,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage URL for the searches (default: the store's SQLite).")] = None,
) -> None:
    """Serve the HTTP API (FastAPI + uvicorn): datasets, jobs with live progress, results, predict."""
    from automl.service.run import serve as run_server

    run_server(host=host, port=port, store=store, queue=queue, workers=workers, token_file=token_file,
               no_auth=no_auth, allowed_roots=allow_root or [], max_upload_mib=max_upload, storage=storage,
               log=lambda line: typer.echo(line, err=True))


@app.command()
def worker(
    store: StoreDir = None,
    queue: QueueUrl = None,
    queue_name: Annotated[str, typer.Option(
        help="Which named queue to take jobs from (a job names its queue; default 'default').")] = "default",
    concurrency: Annotated[int, typer.Option(help="Jobs run at once (threads of one process).")] = 1,
) -> None:
    """Run jobs from the queue until stopped (Ctrl-C / SIGTERM): what `automl serve` submits."""
    from automl.service.run import worker as run_worker

    run_worker(store=store, queue=queue, queue_name=queue_name, concurrency=concurrency)


def _show_bytes(error: UnicodeEncodeError) -> tuple[str, int]:
    """An encoding error handler for the terminal: a file name's byte that is not UTF-8 (Python holds
    it as a surrogate escape) prints as ``\\xNN``, anything else unprintable as its ``\\uNNNN`` escape,
    instead of a crash."""
    shown = [f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
             else c.encode("ascii", "backslashreplace").decode() for c in error.object[error.start:error.end]]
    return "".join(shown), error.end


_SHOW_BYTES = "automl-show-bytes"
codecs.register_error(_SHOW_BYTES, _show_bytes)


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point: user errors become one ``error:`` line and a non-zero exit."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=_SHOW_BYTES)
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
