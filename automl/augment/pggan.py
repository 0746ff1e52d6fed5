"""``pggan``: a progressive GAN (Karras et al. 2018) per chosen class, or one class-conditional GAN.

What follows the paper: generator and discriminator start at 4x4 and grow by doubling up to
``max_size``; each new block is faded in (its output blended with the upsampled output of the
level below, weight ``alpha`` rising linearly from 0 to 1 over a "fade" phase, the real images
blended the same way), then trained alone ("stabilise"); every phase shows ``images_per_phase``
real images (the paper's 800k; far fewer here, a CPU's budget). Pixelwise feature normalisation
after every generator convolution, a minibatch standard-deviation feature map before the
discriminator's last block (groups of 4), equalised learning rate (weights drawn from N(0, 1) and
scaled at run time by He's constant), linear toRGB, WGAN-GP (gradient penalty 10 on random mixes of
real and fake images, one critic step per generator step) plus the drift term 0.001 * D(real)^2,
Adam (lr 1e-3, betas 0 and 0.99), restarted at each phase, and an exponential moving average of the
generator's weights (half-life 10k images, or a quarter of a phase when phases are shorter) that
makes the images. Channels: ``width`` up to 32 px, halved at each doubling above; the latent has
``width`` dimensions.

``conditional: true`` trains one network on every class's training images instead of one per
chosen class: the generator adds a learned class embedding (zero at the start) to the latent, the
discriminator adds a projection term (Miyato and Koyama 2018; zero at the start).

Transfer (``pretrain_data: PATH``, a folder or ``.npz`` as ``automl.data.load_dataset`` reads it):
the networks are first grown on that dataset's training images (its ``train`` and ``val`` splits,
classes pooled and unlabelled; its own test split is never read), then each class's (or the
conditional) network is fine-tuned from them at ``max_size`` for ``finetune_images`` images — the
study's "PGGAN fine-tuned with NIH chest X-rays". The pretrained networks are cached beside the
per-class fits, in ``<generators>/pggan-pretrain-<key>/``, keyed by the parameters that change them,
the pretraining images' fingerprints and the seed, so other classes and runs reuse them. A dataset
that shares some images with the data being augmented but also holds others is refused: it looks
like this data (or a superset), and its other images may be this data's test images, which a
generator must never see; one made only of this data's training images (pooling your own classes)
is fine. An unrelated dataset is taken on trust (docs/augment-gan.md).

Fitted state under the ``work_dir`` the framework hands ``fit`` (``class-<label>/``, or
``conditional/``; the pretraining folder has the same files):

- ``checkpoint.pt``: networks, moving average, optimisers, the phase and step reached, losses;
  written atomically at every phase boundary and every ``CHECKPOINT_STEPS`` steps or
  ``CHECKPOINT_SECONDS`` within a phase, so a killed fit continues its phase where it was saved. A
  run's batches and noise are drawn from seeds of (seed, stream, step), so the continued run ends
  with the same weights as one never stopped;
- ``generator.pt``: the finished moving-average generator (plus the training networks, for the
  pretraining folder), written atomically after the last phase with ``finished`` and the whole
  training configuration: nothing else counts as finished;
- ``training.json``: the schedule, per phase its images, steps, seconds, images/s and losses;
- ``samples.png``: 8x8 samples from fixed latents (a row per class when conditional).

``sampler`` chooses the images a per-class network trains on, as for ``dcgan`` and the Stable
Diffusion fine-tunes (``automl.augment.sd_common.check_sampler``): ``all``, ``random:N``, or
``cluster[:k=4,...]``, one network per kept cluster of the class (``class-<label>-cluster-<id>-<digest>/``,
the clustering in ``clusters/``; ``automl.augment.clusters``), each image's record naming its cluster.
A conditional network trains on every image of every class: it takes ``sampler: all`` only.

Image k of class c comes from a latent seeded by (seed, c, k) through the moving-average generator
(of the cluster image k is allotted to, under ``sampler: cluster``) at ``max_size``, one image per
forward pass, upsampled (bicubic) to ``output_size``.

``step_hook`` (an attribute, not a parameter): when set, called before every training step with a
dict (stream, phase, kind, size, step, steps, alpha, the networks); for tests and benchmarks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from automl import progress as events
from automl import seeds
from automl._files import remove_stale_temporaries, write_json
from automl.augment.base import Augmenter, image_seed, register
from automl.augment.clusters import preflight_sampler, write_summary
from automl.augment.dcgan import _load_checkpoint, _resize, _threads, _to_uint8, _torch_save
from automl.augment.sd_common import check_sampler, sample_groups
from automl.errors import ConfigError, DataError
from automl.params import Interval, Options, param_error

SIZES = (8, 16, 32, 64, 128, 256, 512)  # max_size: the networks grow from 4x4 to one of these
FORMAT = 1  # bump when the saved files change meaning
CHECKPOINT_STEPS = 500  # within a phase, a checkpoint at least every this many steps...
CHECKPOINT_SECONDS = 60.0  # ... or this many seconds: what a killed fit loses at most
EMA_HALF_LIFE = 10_000  # images (the paper's); capped at a quarter of the phase
MBSTD_GROUP = 4
PRELOAD_BYTES = 1 << 30  # real images up to this many decoded bytes are held in memory, others decoded per batch
PRETRAIN_FOLDER = "{name}-pretrain-{digest}"


@register
class PGGAN(Augmenter):
    name = "pggan"
    summary = ("a progressive GAN (Karras et al.) per class or class-conditional, grown from 4x4; optionally "
               "pretrained on a related dataset (pretrain_data) and fine-tuned")
    requires = ("torch",)
    defaults: dict[str, Any] = {
        "max_size": 64,  # the networks' final side (4 -> 8 -> ... -> max_size)
        # Real images shown per phase (the paper's 800k is weeks of CPU). 64 px is 9 phases: about an hour per
        # class on 2 CPU cores at these defaults (docs/benchmarks.md, bench/bench_pggan.py).
        "images_per_phase": 8_000,
        "batch_size": 16,
        "width": 64,  # channels up to 32 px (the paper's 512), halved at each doubling above; also the latent size
        "lr": 1e-3,
        "gp_weight": 10.0,  # WGAN-GP's lambda
        "drift": 0.001,  # weight of D(real)^2, which keeps the critic's output near 0
        "conditional": False,  # one network for every class instead of one per chosen class
        "output_size": 128,  # side of the saved images (upsampled); 0 = the class's median image side
        "pretrain_data": "",  # a related dataset to grow the networks on first (then fine-tune per class)
        "finetune_images": 0,  # with pretrain_data: images shown while fine-tuning at max_size; 0 = images_per_phase
        # Which training images a class's network sees: all, random:N, or cluster[:k=4,...]: a network per kept
        # cluster (automl.augment.clusters).
        "sampler": "all",
    }
    constraints = {
        "max_size": [Options(SIZES)],
        "images_per_phase": [Interval(int, 1, closed="left")],
        "batch_size": [Interval(int, 2, 1024)],  # the minibatch deviation needs two images
        "width": [Interval(int, 4, 1024)],
        "lr": [Interval(float, 0.0, 1.0, closed="right")],
        "gp_weight": [Interval(float, 0.0, closed="left")],
        "drift": [Interval(float, 0.0, closed="left")],
        "output_size": [Options((0,)), Interval(int, 8, 4096)],
        "finetune_images": [Interval(int, 0, closed="left")],
    }
    path_params = ("pretrain_data",)
    fit_params = ("max_size", "images_per_phase", "batch_size", "width", "lr", "gp_weight", "drift", "conditional",
                  "pretrain_data", "finetune_images", "sampler")

    def __init__(self, **params: Any):
        super().__init__(**params)
        # label, or (label, cluster) under sampler: cluster -> the moving-average generator, eval mode
        self.generators_: dict[Any, Any] = {}
        self.output_sides_: dict[int, int] = {}
        # the same keys, "conditional" or "pretrain" -> "trained", "resumed" or "reused" (for tests and logs)
        self.trained_: dict[Any, str] = {}
        self.samplings_: dict[int, Any] = {}  # label -> its networks' image groups (automl.augment.clusters.Grouping)
        self.step_hook: Callable[[dict], None] | None = None

    def check(self) -> None:
        self.params["sampler"] = check_sampler(self.name, self.params["sampler"])
        if self.params["conditional"] and self.params["sampler"] != "all":
            raise param_error(f"augmenter {self.name!r}", "sampler", "'all' with conditional: true",
                              self.params["sampler"], "A conditional network trains on every image of every class; "
                              "choose images per class with conditional: false.")
        if self.params["finetune_images"] and not self.params["pretrain_data"]:
            raise param_error(f"augmenter {self.name!r}", "finetune_images", "0 without pretrain_data",
                              self.params["finetune_images"],
                              "Fine-tuning follows pretraining: set pretrain_data, or leave finetune_images out.")

    def preflight(self) -> None:
        preflight_sampler(self.params["sampler"])
        if self.params["pretrain_data"]:
            pretrain_images(self, {})

    # ---- fit ---------------------------------------------------------------------------------------------

    def fit(self, train: Mapping[int, Sequence], classes: Sequence[str], chosen: Sequence[int], work_dir: Path,
            seed: int, progress: bool = True) -> None:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        p = self.params
        for label in chosen:
            items = list(train.get(label, ()))
            if not items:
                raise ConfigError(f"augmenter {self.name!r}: class {classes[label]!r} has no training images to "
                                  "train a progressive GAN on.")
            self.output_sides_[label] = p["output_size"] or int(
                statistics.median(max(it.width, it.height) for it in items))
        if not chosen:
            return
        pre = _Pretrain(self, train, Path(work_dir), seed) if p["pretrain_data"] else None
        schedule = ([["finetune", p["max_size"], p["finetune_images"] or p["images_per_phase"]]] if pre
                    else growth_schedule(p["max_size"], p["images_per_phase"]))
        # (folder, seed stream, images, their labels (conditional), classes, description, key in generators_)
        if p["conditional"]:
            # In fingerprint order, as the samplers give a class's images: the key does not see the listing order.
            labelled = [(it, c) for c in sorted(train) for it in sorted(train[c], key=lambda it: it.fingerprint)]
            jobs = [("conditional", "all", [it for it, _ in labelled], np.array([c for _, c in labelled]),
                     len(classes), "all classes", "conditional")]
        else:
            jobs = []
            for label in chosen:
                self.samplings_[label] = sample_groups(p["sampler"], train[label], label=label,
                                                       work_dir=Path(work_dir), seed=seed, class_name=classes[label],
                                                       progress=progress)
                for group in self.samplings_[label].groups:
                    if group.cluster is None:
                        jobs.append((f"class-{label}", label, list(group.items), None, 0, classes[label], label))
                    else:
                        jobs.append((f"class-{label}-{group.tag}", f"{label}-cluster-{group.cluster}",
                                     list(group.items), None, 0, f"{classes[label]} cluster {group.cluster}",
                                     (label, group.cluster)))
        for folder_name, stream, items, labels, n_classes, desc, key in jobs:
            folder = Path(work_dir) / folder_name
            if folder.is_dir():
                remove_stale_temporaries(folder)  # half-written files of a killed fit
            config = {**self.fit_signature(), "format": FORMAT, "images": len(items), "seed": seed, "stream": stream,
                      "n_classes": n_classes, "schedule": schedule, "pretrained": pre.key if pre else None}
            generator = _finished(folder, config, device)
            if generator is None:
                start = pre.networks(progress, device) if pre else None
                with _threads():
                    generator = self._train(_Job(stream, desc, _Reals(items, p["max_size"]), labels, n_classes,
                                                 schedule, config, folder, start, keep=False), key, seed, device,
                                            progress)
            else:
                self.trained_[key] = "reused"
                (folder / "checkpoint.pt").unlink(missing_ok=True)  # left if a fit died right after finishing
            generator = generator.eval()
            for unit in chosen if p["conditional"] else [key]:
                self.generators_[unit] = generator
        write_summary(Path(work_dir), classes, self.samplings_)

    def _train(self, job: "_Job", key, seed: int, device, progress: bool):
        """Run ``job``'s schedule (from its checkpoint when there is one); returns the moving-average
        generator, after writing it, the training summary and the sample grid into ``job.folder``."""
        import torch
        import torch.nn.functional as F

        p = self.params
        nets = _nets()
        max_size, batch = p["max_size"], p["batch_size"]
        generator = nets.Generator(max_size, p["width"], job.n_classes)
        discriminator = nets.Discriminator(max_size, p["width"], job.n_classes)
        init = torch.Generator().manual_seed(seeds.derive(seed, "augment", job.stream, "pggan-init", bits=63))
        _init_weights(generator, init)
        _init_weights(discriminator, init)
        ema = nets.Generator(max_size, p["width"], job.n_classes)
        ema.load_state_dict(generator.state_dict())  # a class embedding the pretrained one lacks stays 0 in both
        initial = {}
        if job.start is not None:  # fine-tuning: every network begins as the pretrained one
            _load_pretrained(generator, job.start["train_generator"])
            _load_pretrained(discriminator, job.start["discriminator"])
            _load_pretrained(ema, job.start["generator"])
            initial = {"initial_generator_sha256": state_digest(generator.state_dict()),
                       "pretrained_generator_sha256": job.start["digest"]}
        generator, discriminator, ema = generator.to(device), discriminator.to(device), ema.to(device)
        ema.requires_grad_(False)

        folder, schedule = job.folder, job.schedule
        checkpoint = folder / "checkpoint.pt"
        state = _load_checkpoint(checkpoint, job.config, "PGGAN")
        first_phase, first_step, history, seconds_before = 0, 0, [], 0.0
        if state is not None:
            generator.load_state_dict(state["generator"])
            discriminator.load_state_dict(state["discriminator"])
            ema.load_state_dict(state["ema"])
            first_phase, first_step = state["phase"], state["step"]
            history, seconds_before = state["history"], state["seconds"]
        self.trained_[key] = "resumed" if state is not None else "trained"
        resumed_from = {"phase": first_phase, "step": first_step} if state is not None else None

        steps = [-(-images // batch) for _, _, images in schedule]
        order = _Order(len(job.reals), seed, job.stream)
        bar = events.bar(total=sum(steps), initial=sum(steps[:first_phase]) + first_step,
                         desc=f"pggan {job.desc}", unit="step", disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()

        def save(phase: int, step: int, extra: dict) -> None:
            _torch_save(checkpoint, {
                "config": job.config, "phase": phase, "step": step, "history": history,
                "seconds": seconds_before + time.perf_counter() - t0, "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(), "ema": ema.state_dict(), **extra})

        try:
            for phase in range(first_phase, len(schedule)):
                kind, size, images = schedule[phase]
                n_steps = steps[phase]
                # The paper restarts Adam whenever the level of detail changes: at every phase.
                opt_g = torch.optim.Adam(generator.parameters(), lr=p["lr"], betas=(0.0, 0.99), eps=1e-8)
                opt_d = torch.optim.Adam(discriminator.parameters(), lr=p["lr"], betas=(0.0, 0.99), eps=1e-8)
                start, sums, phase_seconds = 0, [0.0, 0.0], 0.0
                if state is not None and phase == first_phase and first_step:
                    opt_g.load_state_dict(state["opt_g"])
                    opt_d.load_state_dict(state["opt_d"])
                    start, sums, phase_seconds = first_step, list(state["sums"]), state["phase_seconds"]
                beta = 0.5 ** (batch / max(1.0, min(EMA_HALF_LIFE, images / 4)))
                offset = sum(s * batch for s in steps[:phase])  # images the run has drawn before this phase
                t_phase, last_save = time.perf_counter(), time.perf_counter()
                for step in range(start, n_steps):
                    alpha = step / n_steps if kind == "fade" else 1.0
                    index = order.take(offset + step * batch, batch)
                    real = torch.from_numpy(job.reals.batch(index)).to(device).permute(0, 3, 1, 2).float()
                    real = real.div_(127.5).sub_(1.0)
                    if size < max_size:
                        real = F.avg_pool2d(real, max_size // size)
                    if alpha < 1.0:  # the real images fade in as the generator's do
                        low = F.interpolate(F.avg_pool2d(real, 2), scale_factor=2, mode="nearest")
                        real = low + alpha * (real - low)
                    labels = None if job.labels is None else torch.from_numpy(job.labels[index]).to(device)
                    if self.step_hook is not None:
                        self.step_hook({"stream": job.stream, "phase": phase, "kind": kind, "size": size,
                                        "step": step, "steps": n_steps, "alpha": alpha, "real_shape": tuple(real.shape),
                                        "generator": generator, "discriminator": discriminator, "ema": ema})
                    noise = torch.Generator().manual_seed(seeds.derive(
                        seed, "augment", job.stream, "pggan-train", sum(steps[:phase]) + step, bits=63))
                    loss_d, loss_g = _step(generator, discriminator, opt_g, opt_d, real, labels, size, alpha, noise,
                                           p["gp_weight"], p["drift"])
                    with torch.no_grad():
                        for averaged, current in zip(ema.parameters(), generator.parameters()):
                            averaged.lerp_(current, 1.0 - beta)
                    sums[0] += loss_d
                    sums[1] += loss_g
                    bar.set_postfix_str(f"{size}px {kind} a={alpha:.2f} loss_D {loss_d:.3f} loss_G {loss_g:.3f}",
                                        refresh=False, info={"size": size, "kind": kind, "alpha": alpha,
                                                             "loss_d": loss_d, "loss_g": loss_g})
                    bar.update(1)
                    done, now = step + 1, time.perf_counter()
                    if done < n_steps and (done % CHECKPOINT_STEPS == 0 or now - last_save >= CHECKPOINT_SECONDS):
                        save(phase, done, {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "sums": sums,
                                           "phase_seconds": phase_seconds + now - t_phase})
                        last_save = now
                seconds = phase_seconds + time.perf_counter() - t_phase
                history.append({"phase": phase, "kind": kind, "size": size, "images": n_steps * batch,
                                "steps": n_steps, "seconds": round(seconds, 3),
                                "images_per_second": round(n_steps * batch / max(seconds, 1e-9), 2),
                                "loss_d": round(sums[0] / n_steps, 4), "loss_g": round(sums[1] / n_steps, 4)})
                if phase + 1 < len(schedule):  # a phase boundary: the next phase starts from here
                    save(phase + 1, 0, {})
        finally:
            bar.close()

        seconds = seconds_before + time.perf_counter() - t0
        ema.eval()
        saved = {"config": job.config, "finished": True, "generator": ema.state_dict()}
        if job.keep:  # pretraining: fine-tunes start from the training networks too
            saved.update(train_generator=generator.state_dict(), discriminator=discriminator.state_dict())
        _torch_save(folder / "generator.pt", saved)
        total = sum(h["images"] for h in history)
        summary = {**job.config, "class": job.desc, "steps": sum(steps), "seconds": round(seconds, 2),
                   "images_per_second": round(total / max(sum(h["seconds"] for h in history), 1e-9), 2),
                   "resumed_from": resumed_from, "device": str(device), **initial, "history": history}
        write_json(folder / "training.json", summary, indent=1)
        checkpoint.unlink(missing_ok=True)
        _save_grid(ema, folder / "samples.png", seed, job, device)
        return ema

    # ---- generate ----------------------------------------------------------------------------------------

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        import torch

        sampling = None if self.params["conditional"] else self.samplings_.get(label)
        keys = [label] if sampling is None else sampling.units()
        if any(key not in self.generators_ for key in keys):
            raise RuntimeError(f"augmenter {self.name!r} has no generator for class {label}; call fit with that "
                               "class among the chosen ones first")

        def make(unit, chosen: list[int]) -> list[np.ndarray]:  # image k's network: its cluster's, or the class's
            generator = self.generators_[unit]
            device = next(generator.parameters()).device
            labels = torch.tensor([label], device=device) if self.params["conditional"] else None
            # One image per pass: image k must not depend on its batch.
            return [_resize(_to_uint8(generator(_latents(seed, label, [k], generator.latent).to(device), labels))[0],
                            self.output_sides_[label]) for k in chosen]

        with torch.no_grad():
            return make(label, list(indices)) if sampling is None else sampling.gather(indices, make)

    def provenance(self, label: int, indices: Sequence[int]) -> list[dict] | None:
        sampling = self.samplings_.get(label)
        return None if sampling is None else sampling.provenance(indices)  # the cluster, under sampler: cluster

    def close(self) -> None:
        self.generators_.clear()
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def growth_schedule(max_size: int, images_per_phase: int) -> list[list]:
    """The phases: ``[kind, size, images]``, 4x4 "stabilise", then "fade" and "stabilise" per doubling."""
    phases, size = [["stabilise", 4, images_per_phase]], 8
    while size <= max_size:
        phases += [["fade", size, images_per_phase], ["stabilise", size, images_per_phase]]
        size *= 2
    return phases


@dataclass
class _Job:
    """One training run: a class, all classes (conditional), or the pretraining."""

    stream: Any  # the seed streams' label: a class index, "all" or "pretrain"
    desc: str
    reals: "_Reals"
    labels: np.ndarray | None  # per image, its class (conditional only)
    n_classes: int  # 0: unconditional
    schedule: list
    config: dict
    folder: Path
    start: dict | None  # the pretrained networks to fine-tune from
    keep: bool  # keep the training networks in generator.pt (pretraining)


def _step(generator, discriminator, opt_g, opt_d, real, labels, size: int, alpha: float, noise, gp_weight: float,
          drift: float) -> tuple[float, float]:
    """One critic step (WGAN-GP + drift) and one generator step; returns both losses."""
    import torch

    device, b = real.device, real.shape[0]
    z = torch.randn(b, generator.latent, generator=noise).to(device)
    mix = torch.rand(b, 1, 1, 1, generator=noise).to(device)
    z_g = torch.randn(b, generator.latent, generator=noise).to(device)

    with torch.no_grad():
        fake = generator(z, labels, size, alpha)
    d_real = discriminator(real, labels, alpha)
    d_fake = discriminator(fake, labels, alpha)
    mixed = (real + mix * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed, labels, alpha).sum(), mixed, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1.0).square().mean()
    loss_d = d_fake.mean() - d_real.mean() + gp_weight * penalty + drift * d_real.square().mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    discriminator.requires_grad_(False)  # the generator's step needs no gradient for the critic's weights
    try:
        loss_g = -discriminator(generator(z_g, labels, size, alpha), labels, alpha).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    finally:
        discriminator.requires_grad_(True)
    return loss_d.item(), loss_g.item()


# ---- networks ----------------------------------------------------------------------------------------------


def channels(size: int, width: int) -> int:
    """Feature maps at ``size`` px: ``width`` up to 32 px, halved at each doubling above (the paper's
    512 up to 32 px, 256 at 64, 128 at 128 ... for width 512)."""
    return max(1, min(width, width * 32 // size))


@functools.cache
def _nets():
    """The network classes, defined on first use so that importing this module imports no torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def pixel_norm(x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)

    def lrelu(x):
        return F.leaky_relu(x, 0.2)

    def up(x):
        return F.interpolate(x, scale_factor=2, mode="nearest")

    class EqualConv(nn.Module):
        """A convolution with equalised learning rate: N(0, 1) weights scaled by gain / sqrt(fan_in) at run time."""

        def __init__(self, cin: int, cout: int, kernel: int, gain: float = math.sqrt(2)):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
            self.bias = nn.Parameter(torch.zeros(cout))
            self.scale, self.padding = gain / math.sqrt(cin * kernel * kernel), kernel // 2

        def forward(self, x):
            return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    class EqualLinear(nn.Module):
        def __init__(self, cin: int, cout: int, gain: float = math.sqrt(2)):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(cout, cin))
            self.bias = nn.Parameter(torch.zeros(cout))
            self.scale = gain / math.sqrt(cin)

        def forward(self, x):
            return F.linear(x, self.weight * self.scale, self.bias)

    def levels(max_size: int) -> list[int]:
        return [4 * 2 ** i for i in range(int(math.log2(max_size)) - 1)]

    class Generator(nn.Module):
        def __init__(self, max_size: int, width: int, n_classes: int = 0):
            super().__init__()
            self.sizes = levels(max_size)
            self.latent = c4 = channels(4, width)
            self.embed = nn.Embedding(n_classes, c4) if n_classes else None
            self.dense = EqualLinear(c4, c4 * 16, gain=math.sqrt(2) / 4)  # the paper's 4x4 "conv" on a 1x1 latent
            self.conv4 = EqualConv(c4, c4, 3)
            self.blocks = nn.ModuleList(nn.ModuleList([EqualConv(channels(s // 2, width), channels(s, width), 3),
                                                       EqualConv(channels(s, width), channels(s, width), 3)])
                                        for s in self.sizes[1:])
            self.to_rgb = nn.ModuleList(EqualConv(channels(s, width), 3, 1, gain=1.0) for s in self.sizes)

        def forward(self, z, labels=None, size: int | None = None, alpha: float = 1.0):
            level = self.sizes.index(size or self.sizes[-1])
            if self.embed is not None:
                z = z + self.embed(labels)
            x = pixel_norm(lrelu(self.dense(pixel_norm(z))).view(len(z), -1, 4, 4))
            x = pixel_norm(lrelu(self.conv4(x)))
            before = x
            for first, second in self.blocks[:level]:
                before = x
                x = pixel_norm(lrelu(first(up(x))))
                x = pixel_norm(lrelu(second(x)))
            out = self.to_rgb[level](x)
            if level and alpha < 1.0:  # fading in: blend with the level below, upsampled
                low = up(self.to_rgb[level - 1](before))
                out = low + alpha * (out - low)
            return out

    class Discriminator(nn.Module):
        def __init__(self, max_size: int, width: int, n_classes: int = 0):
            super().__init__()
            self.sizes = levels(max_size)
            c4 = channels(4, width)
            self.from_rgb = nn.ModuleList(EqualConv(3, channels(s, width), 1) for s in self.sizes)
            self.blocks = nn.ModuleList(nn.ModuleList([EqualConv(channels(s, width), channels(s, width), 3),
                                                       EqualConv(channels(s, width), channels(s // 2, width), 3)])
                                        for s in self.sizes[1:])
            self.conv4 = EqualConv(c4 + 1, c4, 3)
            self.dense = EqualLinear(c4 * 16, c4)
            self.out = EqualLinear(c4, 1, gain=1.0)
            self.embed = nn.Embedding(n_classes, c4) if n_classes else None

        def block(self, level: int, x):
            first, second = self.blocks[level - 1]
            return F.avg_pool2d(lrelu(second(lrelu(first(x)))), 2)

        def forward(self, image, labels=None, alpha: float = 1.0):
            level = self.sizes.index(image.shape[-1])
            x = lrelu(self.from_rgb[level](image))
            if level:
                x = self.block(level, x)
                if alpha < 1.0:  # fading in: blend with the level below's view of the downsampled image
                    low = lrelu(self.from_rgb[level - 1](F.avg_pool2d(image, 2)))
                    x = low + alpha * (x - low)
                for lower in range(level - 1, 0, -1):
                    x = self.block(lower, x)
            x = lrelu(self.conv4(minibatch_stddev(x)))
            x = lrelu(self.dense(x.flatten(1)))
            out = self.out(x).squeeze(1)
            if self.embed is not None:  # the projection discriminator's class term
                out = out + (self.embed(labels) * x).sum(dim=1)
            return out

    def minibatch_stddev(x, group: int = MBSTD_GROUP):
        """One more feature map: the standard deviation of each feature over a group of images, averaged."""
        n, c, h, w = x.shape
        g = min(group, n)
        while n % g:
            g -= 1
        y = x.view(g, -1, c, h, w)
        y = (y - y.mean(dim=0, keepdim=True)).square().mean(dim=0).add(1e-8).sqrt()
        y = y.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    return type("Nets", (), {"Generator": Generator, "Discriminator": Discriminator,
                             "minibatch_stddev": staticmethod(minibatch_stddev)})


def _init_weights(net, rng) -> None:
    """Equalised learning rate: every weight from N(0, 1), biases 0; a class embedding starts at 0, so a
    conditional network starts as the unconditional one."""
    import torch

    for name, param in net.named_parameters():
        with torch.no_grad():
            if name.startswith("embed."):
                param.zero_()
            elif name.endswith("weight"):
                param.normal_(0.0, 1.0, generator=rng)
            else:
                param.zero_()


def _load_pretrained(net, state: dict) -> None:
    """``state`` into ``net``; a conditional network has a class embedding the pretrained one lacks (it
    stays 0), nothing else may differ."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("embed.") for key in missing):
        raise RuntimeError(f"pretrained networks do not fit: missing {missing}, unexpected {unexpected}")


# ---- data --------------------------------------------------------------------------------------------------


class _Reals:
    """The training images at ``side`` px, uint8 (N, side, side, 3): held in memory when they fit in
    ``PRELOAD_BYTES``, else decoded batch by batch (a large pretraining set)."""

    def __init__(self, items: Sequence, side: int):
        self.items, self.side = list(items), side
        self.cached = self._decode(range(len(self.items))) if len(self.items) * side * side * 3 <= PRELOAD_BYTES \
            else None

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, index) -> np.ndarray:
        index = list(index)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(index)))) as pool:  # Pillow decodes outside the GIL
            return np.stack(list(pool.map(lambda i: self.items[i].load(self.side), index)))

    def batch(self, index: np.ndarray) -> np.ndarray:
        return self.cached[index] if self.cached is not None else self._decode(index)


class _Order:
    """The run's stream of image indices: epoch after epoch, each a permutation seeded by (seed, stream,
    epoch), so the batch of any step is known without replaying the steps before it."""

    def __init__(self, n: int, seed: int, stream):
        self.n, self.seed, self.stream = n, seed, stream
        self.epochs: dict[int, np.ndarray] = {}

    def take(self, start: int, count: int) -> np.ndarray:
        positions = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // self.n):
            if epoch not in self.epochs:
                if len(self.epochs) > 4:
                    self.epochs.clear()
                self.epochs[epoch] = seeds.rng(self.seed, "augment", self.stream, "pggan-order",
                                               int(epoch)).permutation(self.n)
            here = positions // self.n == epoch
            out[here] = self.epochs[epoch][positions[here] % self.n]
        return out


# ---- transfer from a related dataset (also dcgan's) ----------------------------------------------------------


def pretrain_images(augmenter: Augmenter, train: Mapping[int, Sequence]) -> list:
    """The training images (train and val splits, every class) of the augmenter's ``pretrain_data``,
    refused when they share some, not all, images with ``train`` (the images being augmented): such a
    dataset looks like this data or a superset of it, and its other images may be this data's test
    images. In fingerprint order (the cache key does not see the listing order). Errors name the path and
    the fix."""
    from automl.augment.generate import TRAIN_SPLITS
    from automl.data import load_dataset

    path = augmenter.params["pretrain_data"]
    try:
        data = load_dataset(path, skip_bad=augmenter.skip_bad)
    except DataError as exc:
        raise DataError(f"augmenter {augmenter.name!r}, parameter 'pretrain_data': {exc}") from exc
    items = sorted((it for it in data.items if it.split in TRAIN_SPLITS), key=lambda it: it.fingerprint)
    if not items:
        raise DataError(f"augmenter {augmenter.name!r}: pretrain_data {path} has no training images (its "
                        f"splits: {', '.join(data.splits) or 'none'}); pass a dataset with a train split.")
    mine = {it.fingerprint for members in train.values() for it in members}
    shared = [it for it in items if it.fingerprint in mine]
    others = [it for it in items if it.fingerprint not in mine]
    if shared and others:
        raise DataError(
            f"augmenter {augmenter.name!r}: pretrain_data {path} holds {len(shared)} of the training images being "
            f"augmented (e.g. {shared[0].path}) and {len(others)} other images (e.g. {others[0].path}): it looks "
            "like this data or a superset of it, and those other images may be this data's test images, which a "
            "generator must never see. Remove this data's images from it, or pass a dataset made of this data's "
            "training images only.")
    return items


def pretrain_folder(name: str, config: Mapping, items: Sequence, seed: int) -> str:
    """The pretrained networks' folder name under the store's generators folder: a hash of the augmenter,
    the settings that change them, the pretraining images' fingerprints (unlabelled: the labels change
    nothing) and the seed."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([name, dict(config), seed], sort_keys=True, default=str).encode())
    for fp in sorted(it.fingerprint for it in items):
        h.update(f"{fp};".encode())
    return PRETRAIN_FOLDER.format(name=name, digest=h.hexdigest())


def state_digest(state: Mapping) -> str:
    """SHA-256 of a state dict's names, shapes and values: which weights a fine-tune started from."""
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


class _Pretrain:
    """pggan's pretraining for one fit: the images and key at once (they key the fine-tunes), the networks
    (trained, resumed or reused) only when a fine-tune needs them."""

    def __init__(self, augmenter: PGGAN, train: Mapping[int, Sequence], work_dir: Path, seed: int):
        self.augmenter, self.seed = augmenter, seed
        p = augmenter.params
        self.items = pretrain_images(augmenter, train)
        self.config = {"max_size": p["max_size"], "images_per_phase": p["images_per_phase"],
                       "batch_size": p["batch_size"], "width": p["width"], "lr": p["lr"], "gp_weight": p["gp_weight"],
                       "drift": p["drift"], "format": FORMAT, "images": len(self.items), "seed": seed,
                       "stream": "pretrain", "n_classes": 0,
                       "schedule": growth_schedule(p["max_size"], p["images_per_phase"])}
        self.key = pretrain_folder(augmenter.name, self.config, self.items, seed)
        self.folder = Path(work_dir).parent / self.key
        self._networks: dict | None = None

    def networks(self, progress: bool, device) -> dict:
        """The pretrained ``generator`` (moving average), ``train_generator`` and ``discriminator`` state
        dicts, and the moving average's ``digest``."""
        if self._networks is None:
            saved = _finished(self.folder, self.config, device, whole=True)
            if saved is None:
                if self.folder.is_dir():
                    remove_stale_temporaries(self.folder)
                p = self.augmenter.params
                job = _Job("pretrain", f"pretrain ({len(self.items)} images)", _Reals(self.items, p["max_size"]),
                           None, 0, self.config["schedule"], self.config, self.folder, None, keep=True)
                with _threads():
                    self.augmenter._train(job, "pretrain", self.seed, device, progress)
                saved = _finished(self.folder, self.config, device, whole=True)
            else:
                self.augmenter.trained_["pretrain"] = "reused"
            self._networks = {**saved, "digest": state_digest(saved["train_generator"])}
        return self._networks


# ---- files -------------------------------------------------------------------------------------------------


def _finished(folder: Path, config: dict, device, whole: bool = False):
    """The finished generator saved in ``folder`` for exactly ``config`` (``whole``: every saved state
    dict), else None."""
    import torch

    path = folder / "generator.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved.get("config") != config or not saved.get("finished"):
            return None
        if whole:
            return saved if "train_generator" in saved else None
        generator = _nets().Generator(config["max_size"], config["width"], config["n_classes"]).to(device)
        generator.load_state_dict(saved["generator"])
    except Exception as exc:  # a damaged file: train again rather than trust it
        warnings.warn(f"ignoring unreadable PGGAN generator {path} ({exc}); training again", stacklevel=2)
        return None
    return generator


def _latents(seed: int, label, indices: Sequence[int], latent: int):
    import torch

    return torch.stack([torch.randn(latent, generator=torch.Generator().manual_seed(
        image_seed(seed, label, k, "pggan"))) for k in indices])


def _save_grid(generator, path: Path, seed: int, job: _Job, device, columns: int = 8) -> None:
    import io

    import torch
    from PIL import Image

    from automl._files import atomic_write

    rows = list(range(job.n_classes)) if job.n_classes else [None] * columns
    with torch.no_grad():
        if job.n_classes:
            z = torch.cat([_latents(seed, c, range(columns), generator.latent) for c in rows])
            labels = torch.tensor([c for c in rows for _ in range(columns)], device=device)
        else:
            z, labels = _latents(seed, job.stream, range(columns * columns), generator.latent), None
        images = _to_uint8(generator(z.to(device), labels))
    side = images.shape[1]
    grid = images.reshape(len(rows), columns, side, side, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(len(rows) * side, columns * side, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid)).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
