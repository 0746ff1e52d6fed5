"""What the Stable Diffusion augmenters share: the base model, the device, prompts, seeds, the
fine-tune image sampler, generation and memory release.

torch, diffusers and transformers are imported inside functions only (``import automl`` stays fast).

- The base model (``model``) is a Hub id or a local diffusers folder. A Hub id is looked up in the
  Hugging Face cache first, without touching the network; only when it is missing there (and
  ``HF_HUB_OFFLINE`` is not set) is it downloaded. Anything else is a ``WeightsUnavailableError``
  naming the id, the cache folder and the local-folder option: never a silent fallback.
- Every component is then loaded from that one resolved folder, so training copies start from the
  original float32 weights whatever precision inference uses.
- The safety checker is not loaded: it blacks out images it flags, and grayscale medical scans are
  not what it was made for (it would silently replace training images with black squares).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from automl import progress as events
from automl import seeds
from automl.augment import clusters
from automl.augment.base import Augmenter, image_seed
from automl.errors import ConfigError, WeightsUnavailableError
from automl.params import PRECISIONS, Interval, Options, param_error

# The SD 1.5 the study used; runwayml/stable-diffusion-v1-5 was withdrawn from the Hub in 2024 and
# this is its maintained mirror.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REQUIRES = ("torch", "diffusers", "transformers", "accelerate")
SWITCHES = ("auto", "on", "off")
# The extractors' words; the older fp32/fp16/bf16 stay accepted and are stored as these, so an
# explicit "fp16" and "float16" name the same cached images. (The default, auto, is unchanged.)
PRECISION = Options(PRECISIONS, aliases={"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"})

# Parameters every SD augmenter has. Generation-only ones never enter ``fit_params``.
COMMON = {
    "model": DEFAULT_MODEL,
    "device": "auto",  # auto (cuda when present), cpu, cuda, cuda:N
    "precision": "auto",  # auto: float16 on cuda, float32 on cpu
    "resolution": 512,
    "steps": 24,
    "guidance_scale": 7.5,
    "negative_prompt": "",
    "batch_size": 1,  # images per pipeline call; >1 is faster on a GPU, equal up to float rounding
}
COMMON_CONSTRAINTS = {
    "precision": [PRECISION],
    "resolution": [Interval(int, 8, closed="left")],
    "steps": [Interval(int, 1, closed="left")],
    "guidance_scale": [Interval(float, 0, closed="left")],
    "batch_size": [Interval(int, 1, closed="left")],
}
# And every fine-tuning augmenter.
TRAINING_CONSTRAINTS = {
    "learning_rate": [Interval(float, 0, closed="neither")],
    "train_steps": [Interval(int, 0, closed="left")],
    "steps_per_image": [Interval(int, 1, closed="left")],
    "max_train_steps": [Interval(int, 1, closed="left")],
    "train_batch_size": [Interval(int, 1, closed="left")],
    "memory_savers": [Options(SWITCHES)],
}


def check_common(name: str, p: dict, default: str = DEFAULT_MODEL) -> None:
    """What ``COMMON_CONSTRAINTS`` cannot say; ``default``: the augmenter's default model."""
    owner = f"augmenter {name!r}"
    if not p["model"].strip():
        raise param_error(owner, "model", "a Hugging Face Hub id or a local diffusers folder", p["model"],
                          f"The default is {default!r}.")
    device = p["device"]
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise param_error(owner, "device", "auto, cpu, cuda or cuda:N", device)
    if p["resolution"] % 8:
        raise param_error(owner, "resolution", "a multiple of 8 (the VAE downsamples by 8)", p["resolution"])


def check_training(name: str, p: dict) -> None:
    """What ``TRAINING_CONSTRAINTS`` cannot say; stores the sampler in its canonical form."""
    p["sampler"] = check_sampler(name, p["sampler"])


def check_template(name: str, key: str, template: str, fields: Sequence[str]) -> None:
    """A prompt template may use only ``fields`` (e.g. {class}, {token})."""
    try:
        template.format(**{f: "x" for f in fields})
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join("{" + f + "}" for f in fields)
        raise ConfigError(f"The {key!r} parameter of augmenter {name!r} is not a valid prompt template "
                          f"({exc!r}); it may use {allowed}. Got {template!r} instead.") from None


def fill(template: str, **fields: str) -> str:
    return " ".join(template.format(**fields).split())


def class_noun(class_name: str) -> str:
    """The word a prompt uses for a class: numbered classes (MedMNIST .npz) read as 'class 3'."""
    name = class_name.replace("_", " ").replace("-", " ").strip()
    return f"class {name}" if name.isdigit() else name


# ---------------------------------------------------------------- base model


def resolve_model(model: str, default: str = DEFAULT_MODEL) -> Path:
    """The local folder holding ``model`` (a diffusers folder, or a Hub id's cached snapshot);
    ``default``: the Hub id an error suggests."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise WeightsUnavailableError(
                f"Stable Diffusion model folder {str(path)!r} has no model_index.json; expected a diffusers "
                "folder as pipeline.save_pretrained writes it: model_index.json beside unet/, vae/, scheduler/ and "
                "the conditioning's folders (text_encoder/ and tokenizer/; for image variations image_encoder/ and "
                "feature_extractor/).")
        return path
    if model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1:
        raise WeightsUnavailableError(
            f"Stable Diffusion model folder {model!r} does not exist. Fix: give an existing local diffusers "
            f"folder, or a Hugging Face Hub id such as {default!r}.")
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    try:
        return Path(DiffusionPipeline.download(model, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - every way of "not in the cache" ends in the same advice
        cached_error = exc
    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline:
        try:
            return Path(DiffusionPipeline.download(model))
        except Exception as exc:  # noqa: BLE001
            cached_error = exc
    raise WeightsUnavailableError(
        f"Stable Diffusion weights {model!r} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}; set by "
        f"HF_HOME or HF_HUB_CACHE) and could not be downloaded"
        f"{' because HF_HUB_OFFLINE is set' if offline else ''} ({type(cached_error).__name__}: "
        f"{str(cached_error).splitlines()[0] if str(cached_error) else ''}). Fix: download them once on a machine "
        f"with network (huggingface-cli download {model}) into that cache, or pass params: {{model: /path/to/folder}} "
        "with a local diffusers folder.") from cached_error


def model_class(folder: Path) -> str:
    return json.loads((folder / "model_index.json").read_text()).get("_class_name", "")


def is_sdxl(folder: Path) -> bool:
    return "XL" in model_class(folder)


def load_pipeline(folder: Path, kind: str, device: str, dtype, **overrides) -> Any:
    """A diffusers pipeline of ``kind`` (text2img / img2img / variation) for the base model in ``folder``;
    ``overrides`` replace components (a fine-tuned UNet) instead of loading them."""
    import diffusers

    xl = is_sdxl(folder)
    cls = {("text2img", False): diffusers.StableDiffusionPipeline,
           ("img2img", False): diffusers.StableDiffusionImg2ImgPipeline,
           ("text2img", True): diffusers.StableDiffusionXLPipeline,
           ("img2img", True): diffusers.StableDiffusionXLImg2ImgPipeline,
           ("variation", False): diffusers.StableDiffusionImageVariationPipeline}[kind, xl]
    extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    with quiet_loading():
        pipe = cls.from_pretrained(folder, torch_dtype=dtype, **extra, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@contextlib.contextmanager
def quiet_loading():
    """Loading without the libraries' per-file progress bars and notices about arguments that newer
    releases renamed (``torch_dtype`` is kept: the oldest supported diffusers knows no other)."""
    import diffusers
    import transformers

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*safety.checker.*")
        warnings.filterwarnings("ignore", message=".*use `dtype` instead.*")
        warnings.filterwarnings("ignore", message=".*`torch_dtype` is deprecated.*")
        bars = (diffusers.utils.logging, transformers.utils.logging)
        for logging in bars:
            logging.disable_progress_bar()
        try:
            yield
        finally:
            for logging in bars:
                logging.enable_progress_bar()


# ---------------------------------------------------------------- device and precision


class SDAugmenter(Augmenter):
    """What every Stable Diffusion augmenter shares: the weights check before a fit's baseline, and
    the start of ``fit`` (the class names, the base model's folder, the device)."""

    def preflight(self) -> None:
        resolve_model(self.params["model"], self.defaults["model"])
        clusters.preflight_sampler(self.params.get("sampler", "all"))

    def start_fit(self, classes) -> None:
        self.classes_ = list(classes)
        self.folder_ = resolve_model(self.params["model"], self.defaults["model"])
        self.device_ = pick_device(self.params["device"])


def pick_device(param: str) -> str:
    import torch

    if param == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if param.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {param!r} was asked for, but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Fix: device: auto or cpu.")
    return param


def inference_dtype(device: str, precision: str):
    """The torch dtype for a checked ``precision`` (one of ``PRECISIONS``, named as torch names them)."""
    import torch

    if precision == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if device == "cpu" and precision == "float16":
        raise ConfigError("precision float16 is not supported on the CPU (many kernels are missing); use float32 "
                          "or bfloat16.")
    return getattr(torch, precision)


def training_precision(device: str, precision: str):
    """(autocast dtype or None, needs a gradient scaler). Trained weights always stay float32."""
    import torch

    if not device.startswith("cuda") or precision == "float32":
        return None, False
    if precision == "auto":
        precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return (torch.bfloat16, False) if precision == "bfloat16" else (torch.float16, True)


_cpu_warned: set[str] = set()


def warn_cpu(device: str, what: str) -> None:
    """Say up front that the CPU path is slow; ``estimate`` follows with measured figures."""
    if device == "cpu" and what not in _cpu_warned:
        _cpu_warned.add(what)
        warnings.warn(f"{what} runs on the CPU in float32: Stable Diffusion at 512 px takes minutes per image or "
                      "training step there. A CUDA GPU is strongly advised; an estimate follows the first step.",
                      stacklevel=3)


def estimate(device: str, what: str, seconds: float, remaining: int, unit: str) -> None:
    if device == "cpu" and remaining > 0:
        total = seconds * remaining
        events.note(f"{what} on CPU: {seconds:.2f} s per {unit} measured; about {_duration(total)} for the "
                    f"remaining {remaining} {unit}s", echo=True, seconds_per_unit=seconds, remaining=remaining,
                    unit=unit)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds > 5400 else f"{seconds / 60:.1f} min" if seconds > 90 else f"{seconds:.0f} s"


def release() -> None:
    """Free torch memory after the caller dropped its references: TensorFlow shares the GPU in one fit."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- seeds and generation


def run_pipeline(pipe, prompts: Sequence[str] | None, seeds: Sequence[int], *, batch_size: int,
                 images: Sequence | None = None, negative_prompt: str = "", timer: Callable | None = None,
                 **kwargs) -> list[np.ndarray]:
    """Call ``pipe`` in batches with one CPU generator per image (the same image whatever the batching
    and device); returns uint8 RGB arrays. ``prompts`` None: a pipeline conditioned on ``images`` alone
    (called without a prompt). ``images``: uint8 arrays (handed over as PIL images), or tensors the
    caller preprocessed itself (handed over stacked, past the pipeline's own preprocessing)."""
    import torch
    from PIL import Image

    out: list[np.ndarray] = []
    for start in range(0, len(seeds), batch_size):
        events.checkpoint()  # a batch can take minutes on a CPU: a listener may cancel between them
        stop = min(start + batch_size, len(seeds))
        t0 = time.perf_counter()
        call = dict(kwargs)
        if images is not None:
            batch = list(images[start:stop])
            call["image"] = (torch.stack(batch) if isinstance(batch[0], torch.Tensor)
                             else [Image.fromarray(im) for im in batch])
        if prompts is not None:
            call["prompt"] = list(prompts[start:stop])
        if negative_prompt:
            call["negative_prompt"] = [negative_prompt] * (stop - start)
        result = pipe(generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                      output_type="np", **call)
        out.extend(to_uint8(x) for x in result.images)
        if timer is not None:
            timer((time.perf_counter() - t0) / (stop - start), len(seeds) - stop)
    return out


def generate_images(augmenter, pipe, prompt: str | None, label: int, indices: Sequence[int], seed: int,
                    **kwargs) -> list[np.ndarray]:
    """One image per index with the augmenter's generation parameters (seeded per index); the first
    image on the CPU prints a measured estimate. ``prompt`` None: an image-conditioned pipeline, which
    takes no prompt (nor a negative one)."""
    p = augmenter.params

    def timer(per_image: float, remaining: int) -> None:
        if not getattr(augmenter, "estimated_", False):
            augmenter.estimated_ = True
            estimate(augmenter.device_, augmenter.name, per_image, remaining, "image")

    return run_pipeline(pipe, None if prompt is None else [prompt] * len(indices),
                        [image_seed(seed, label, k, "generate") for k in indices],
                        batch_size=p["batch_size"], negative_prompt=p.get("negative_prompt", ""),
                        num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"], timer=timer, **kwargs)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the fine-tune image sampler

Sampler = Callable[[list, str, int], list]
SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str) -> Callable[[Sampler], Sampler]:
    """Add a sampler: ``fn(items, argument, seed) -> items`` picks the images a fine-tune sees
    (``argument`` is the text after ``name:``, or "")."""
    def add(fn: Sampler) -> Sampler:
        SAMPLERS[name] = fn
        return fn
    return add


@register_sampler("all")
def _sample_all(items: list, arg: str, seed: int) -> list:
    return list(items)


@register_sampler("random")
def _sample_random(items: list, arg: str, seed: int) -> list:
    n = int(arg)
    if n >= len(items):
        return list(items)
    rng = seeds.rng(seed, "augment", "sampler")
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def check_sampler(name: str, spec: str) -> str:
    """``spec`` checked, in the form to store: ``cluster`` specs written out whole
    (``automl.augment.clusters``), others as given."""
    kind, _, arg = spec.partition(":")
    if kind == clusters.NAME:
        return clusters.ClusterSampler.parse(spec, f"augmenter {name!r}").text()
    if kind not in SAMPLERS:
        raise ConfigError(f"The 'sampler' parameter of augmenter {name!r} names an unknown sampler {kind!r}; valid: "
                          f"{', '.join(sorted([*SAMPLERS, clusters.NAME]))} (random takes a count: random:20; cluster "
                          f"options: cluster:k=4,top=20). Got {spec!r} instead.")
    if kind == "all" and arg:
        raise ConfigError(f"The 'sampler' parameter of augmenter {name!r}: 'all' takes no argument. Got {spec!r}.")
    if kind == "random" and not (arg.isdigit() and int(arg) > 0):
        raise ConfigError(f"The 'sampler' parameter of augmenter {name!r}: random needs a positive count, as in "
                          f"random:20. Got {spec!r} instead.")
    return spec


def sample_items(spec: str, items: Sequence, seed: int) -> list:
    """The fine-tune images of one class, chosen by ``spec``; independent of the listing order.
    ``cluster`` chooses a group per cluster: ``sample_groups``."""
    kind, _, arg = spec.partition(":")
    if kind == clusters.NAME:
        raise ValueError("the cluster sampler chooses one group of images per cluster: use sample_groups")
    ordered = sorted(items, key=lambda it: it.fingerprint)
    chosen = SAMPLERS[kind](ordered, arg, seed)
    if not chosen:
        raise ConfigError(f"sampler {spec!r} chose no image out of {len(items)}")
    return chosen


def sample_groups(spec: str, items: Sequence, *, label: int, work_dir: Path, seed: int, class_name: str = "",
                  progress: bool = True) -> clusters.Grouping:
    """The fine-tune groups of one class: one per kept cluster for ``cluster`` (embedded and clustered
    under ``work_dir``, reused by a re-run), else one, ``sample_items``."""
    if clusters.is_cluster(spec):
        return clusters.ClusterSampler.parse(spec).groups(items, label=label, work_dir=work_dir, seed=seed,
                                                          class_name=class_name, progress=progress)
    return clusters.Grouping.whole(label, sample_items(spec, items, seed))
