"""``dcgan``: one DCGAN per chosen class, trained on that class's training images.

The architecture and training follow Radford et al. (2016): a 100-d Gaussian latent, a generator
of fractional-strided convolutions with BatchNorm and ReLU ending in tanh, a discriminator of
strided convolutions with BatchNorm (not on its first layer) and LeakyReLU 0.2, weights drawn from
N(0, 0.02), Adam with learning rate 2e-4 and beta1 0.5, the non-saturating generator loss. The
networks work at 64x64 (``size: 64``), or 32x32 for tiny images (``size: 0`` picks 32 when every
image of the class is at most 32 px on its longer side, as MedMNIST's 28 px ones are). Images are
decoded to RGB (grayscale scans become three equal channels) and squashed to the network's side;
outputs are upsampled (bicubic) to ``output_size`` so the extractors get reasonable inputs.

``pretrain_data: PATH`` (a related dataset): a DCGAN of the same side is first trained for
``pretrain_epochs`` on that dataset's training images, classes pooled, and each class's DCGAN starts
from its generator and discriminator; the pretrained pair is cached in the store's generators folder
(``dcgan-pretrain-<key>/``, keyed by its settings, the images' fingerprints and the seed) and reused
by every class and run that needs it. Which datasets are refused, and why: ``automl.augment.pggan``.

Fitted state, per class, under the ``work_dir`` the framework hands ``fit``:

- ``class-<label>/checkpoint.pt``: networks, optimisers, random state and losses after the last
  saved epoch, written atomically while training; a killed fit resumes from it;
- ``class-<label>/generator.pt``: the finished generator, written atomically after the last epoch;
  only a generator that loads and says it finished the same training counts as finished;
- ``class-<label>/training.json``: epochs, steps, seconds and the per-epoch losses;
- ``class-<label>/samples.png``: an 8x8 grid of samples from fixed latents;
- with ``sampler: cluster``, the same in ``class-<label>-cluster-<id>-<digest>/`` per kept cluster,
  trained on its images nearest the centroid, and the clustering in ``clusters/`` (``automl.augment.clusters``).

Image k of a class comes from a latent drawn from a generator seeded by (seed, label, k), through
the generator in eval mode one image at a time, so it does not depend on the batching.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from automl import progress as events
from automl.augment.base import Augmenter, image_seed, register
from automl.augment.clusters import preflight_sampler, write_summary
from automl.augment.sd_common import check_sampler, sample_groups
from automl._files import atomic_write, remove_stale_temporaries, write_json
from automl.errors import ConfigError
from automl.params import Interval, Options

LATENT = 100
TINY = 32  # classes whose images are at most this many px train at 32x32 under size: 0
CHECKPOINT_SECONDS = 30.0  # a killed fit loses at most about this much training
FORMAT = 1  # bump when the saved files change meaning


@register
class DCGAN(Augmenter):
    name = "dcgan"
    summary = "a DCGAN per class (Radford et al.), trained on the class's training images"
    requires = ("torch",)
    defaults: dict[str, Any] = {
        "size": 0,  # the networks' side: 32 or 64; 0 = 32 when the class's images are <= 32 px, else 64
        # Passes over the class's images. 150 x 147 images (BreastMNIST's minority class, 32x32) is about
        # a minute on 2 idle CPU cores; 64x64 networks cost about 6x more per image (bench/bench_dcgan.py).
        "epochs": 150,
        "batch_size": 32,  # the paper's 128 leaves too few updates on a few hundred images
        "width": 64,  # channels of the generator's last (and the discriminator's first) hidden layer
        "lr": 2e-4,
        "beta1": 0.5,
        "output_size": 128,  # side of the saved images (upsampled); 0 = the class's median image side
        "pretrain_data": "",  # a related dataset to train on first, classes pooled; each class is fine-tuned from it
        "pretrain_epochs": 20,  # passes over pretrain_data's images
        # Which training images a DCGAN sees: all, random:N, or cluster[:k=4,...]: a DCGAN per kept cluster
        # (automl.augment.clusters).
        "sampler": "all",
    }
    constraints = {
        "size": [Options((0, 32, 64))],
        "epochs": [Interval(int, 1, closed="left")],
        "batch_size": [Interval(int, 1, closed="left")],
        "width": [Interval(int, 4, 1024)],
        "lr": [Interval(float, 0.0, 1.0, closed="right")],
        "beta1": [Interval(float, 0.0, 1.0, closed="left")],
        "output_size": [Options((0,)), Interval(int, 8, 4096)],
        "pretrain_epochs": [Interval(int, 1, closed="left")],
    }
    path_params = ("pretrain_data",)
    fit_params = ("size", "epochs", "batch_size", "width", "lr", "beta1", "pretrain_data", "pretrain_epochs", "sampler")
    later_params = ("pretrain_data", "pretrain_epochs", "sampler")  # stores made before them keep their keys

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.generators_: dict[int, Any] = {}  # label -> generator network, eval mode
        self.output_sides_: dict[int, int] = {}
        self.trained_: dict[int, str] = {}  # label -> "trained", "resumed" or "reused" (for tests and logs)
        self.samplings_: dict[int, Any] = {}  # label -> its DCGANs' image groups (automl.augment.clusters.Grouping)

    def check(self) -> None:
        self.params["sampler"] = check_sampler(self.name, self.params["sampler"])

    def preflight(self) -> None:
        preflight_sampler(self.params["sampler"])
        if self.params["pretrain_data"]:
            from automl.augment.pggan import pretrain_images

            pretrain_images(self, {})

    # ---- fit ---------------------------------------------------------------------------------------------

    def fit(self, train: Mapping[int, Sequence], classes: Sequence[str], chosen: Sequence[int], work_dir: Path,
            seed: int, progress: bool = True) -> None:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pretrain = None  # pretrain_data's training images, read once
        for label in chosen:
            items = list(train.get(label, ()))
            if not items:
                raise ConfigError(f"augmenter {self.name!r}: class {classes[label]!r} has no training images to "
                                  "train a DCGAN on.")
            side = self.params["size"] or (TINY if max(max(it.width, it.height) for it in items) <= TINY else 64)
            self.output_sides_[label] = self.params["output_size"] or int(
                statistics.median(max(it.width, it.height) for it in items))
            self.samplings_[label] = sample_groups(self.params["sampler"], items, label=label, work_dir=Path(work_dir),
                                                   seed=seed, class_name=classes[label], progress=progress)
            for unit, images, folder in self._units(label, items, Path(work_dir)):
                if folder.is_dir():
                    remove_stale_temporaries(folder)  # half-written files of a killed fit
                config = {**self.fit_signature(), "side": side, "latent": LATENT, "format": FORMAT,
                          "images": len(images), "seed": seed, "label": label,
                          **({} if unit == label else {"cluster": unit[1]})}
                # The pretrained pair's key (its images' fingerprints) keys the fine-tune.
                if self.params["pretrain_data"]:
                    from automl.augment.pggan import pretrain_folder, pretrain_images

                    pretrain = pretrain or pretrain_images(self, train)
                    pre_config = {**{k: v for k, v in config.items()
                                     if k not in ("pretrain_data", "pretrain_epochs", "sampler", "cluster")},
                                  "epochs": self.params["pretrain_epochs"], "images": len(pretrain),
                                  "label": "pretrain"}
                    config["pretrained"] = pretrain_folder(self.name, pre_config, pretrain, seed)
                generator = self._finished(folder, config, device)
                if generator is None:
                    start = None if pretrain is None else self._pretrained(
                        pretrain, pre_config, Path(work_dir).parent / config["pretrained"], seed, device, progress)
                    with _threads():
                        generator = self._train(images, classes[label], label, side, config, folder, seed, device,
                                                progress, start)
                    self.trained_[unit] = self.trained_.pop(label)  # _train notes it under the class
                else:
                    self.trained_[unit] = "reused"
                    (folder / "checkpoint.pt").unlink(missing_ok=True)  # left if a fit died right after finishing
                self.generators_[unit] = generator.eval()
        write_summary(Path(work_dir), classes, self.samplings_)

    def _units(self, label: int, items: list, work_dir: Path):
        """(key, training images, folder) of each DCGAN class ``label`` trains: one (key ``label``) on
        the sampled class (under ``sampler: all`` its images as listed, as before samplers existed), or
        one per kept cluster (key ``(label, cluster id)``)."""
        for group in self.samplings_[label].groups:
            if group.cluster is None:
                chosen = items if self.params["sampler"] == "all" else list(group.items)
                yield label, chosen, work_dir / f"class-{label}"
            else:
                yield (label, group.cluster), list(group.items), work_dir / f"class-{label}-{group.tag}"

    def _finished(self, folder: Path, config: dict, device):
        """The finished generator saved in ``folder`` for exactly this training, else None."""
        import torch

        path = folder / "generator.pt"
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            if saved.get("config") != config or not saved.get("finished"):
                return None
            generator = _generator(config["side"], config["width"]).to(device)
            generator.load_state_dict(saved["generator"])
        except Exception as exc:  # a damaged file: train again rather than trust it
            warnings.warn(f"ignoring unreadable DCGAN generator {path} ({exc}); training again", stacklevel=2)
            return None
        return generator

    def _pretrained(self, items, config: dict, folder: Path, seed: int, device, progress: bool) -> dict:
        """The generator and discriminator trained on pretrain_data's ``items`` (classes pooled) under
        ``config``: reused from ``folder``, else trained (or resumed) there."""
        import torch

        path = folder / "generator.pt"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}
        except Exception as exc:  # a damaged file: train again rather than trust it
            warnings.warn(f"ignoring unreadable DCGAN generator {path} ({exc}); training again", stacklevel=2)
            saved = {}
        if saved.get("config") == config and saved.get("finished") and "discriminator" in saved:
            self.trained_["pretrain"] = "reused"
            return saved
        if folder.is_dir():
            remove_stale_temporaries(folder)
        with _threads():
            self._train(items, f"pretrain ({len(items)} images)", "pretrain", config["side"], config, folder, seed,
                        device, progress)
        return torch.load(path, map_location="cpu", weights_only=True)

    def _train(self, items, class_name: str, label: int, side: int, config: dict, folder: Path, seed: int,
               device, progress: bool, start: dict | None = None):
        import torch
        from torch import nn

        p = {**self.params, "epochs": config["epochs"]}  # pretraining runs pretrain_epochs
        real = torch.from_numpy(np.stack([it.load(side) for it in items])).permute(0, 3, 1, 2)
        real = real.float().div_(127.5).sub_(1.0)  # [-1, 1], tanh's range
        n = len(real)
        batch = min(p["batch_size"], n)
        steps_per_epoch = -(-n // batch)

        rng = torch.Generator().manual_seed(image_seed(seed, label, 0, "dcgan-train"))
        generator, discriminator = _generator(side, p["width"]), _discriminator(side, p["width"])
        for net in (generator, discriminator):
            _init_weights(net, rng)
        initial = None
        if start is not None:  # fine-tuning: both networks begin as the pretrained pair
            generator.load_state_dict(start["generator"])
            discriminator.load_state_dict(start["discriminator"])
            from automl.augment.pggan import state_digest

            initial = {"initial_generator_sha256": state_digest(generator.state_dict()),
                       "pretrained_generator_sha256": state_digest(start["generator"])}
        generator, discriminator = generator.to(device), discriminator.to(device)
        opt_g = torch.optim.Adam(generator.parameters(), lr=p["lr"], betas=(p["beta1"], 0.999))
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=p["lr"], betas=(p["beta1"], 0.999))
        history: list[dict] = []
        start_epoch, seconds_before = 0, 0.0

        checkpoint = folder / "checkpoint.pt"
        state = _load_checkpoint(checkpoint, config)
        if state is not None:
            generator.load_state_dict(state["generator"])
            discriminator.load_state_dict(state["discriminator"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            rng.set_state(state["rng"])
            history, start_epoch, seconds_before = state["history"], state["epoch"], state["seconds"]
        self.trained_[label] = "resumed" if state is not None else "trained"

        loss = nn.BCEWithLogitsLoss()
        ones = torch.ones(batch, device=device)
        zeros = torch.zeros(batch, device=device)
        bar = events.bar(total=p["epochs"] * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                         desc=f"dcgan {class_name}", unit="step", disable=not progress, dynamic_ncols=True)
        t0, last_save = time.perf_counter(), time.perf_counter()
        try:
            for epoch in range(start_epoch, p["epochs"]):
                generator.train()
                discriminator.train()
                order = torch.randperm(n, generator=rng)
                sums = np.zeros(2)
                for start in range(0, n, batch):
                    x = real[order[start:start + batch]].to(device)
                    b = len(x)
                    z = torch.randn(b, LATENT, 1, 1, generator=rng).to(device)
                    fake = generator(z)
                    # Discriminator: real -> 1, fake -> 0.
                    opt_d.zero_grad(set_to_none=True)
                    loss_d = loss(discriminator(x), ones[:b]) + loss(discriminator(fake.detach()), zeros[:b])
                    loss_d.backward()
                    opt_d.step()
                    # Generator: the non-saturating loss, fake -> 1.
                    opt_g.zero_grad(set_to_none=True)
                    loss_g = loss(discriminator(fake), ones[:b])
                    loss_g.backward()
                    opt_g.step()
                    step_d, step_g = loss_d.item(), loss_g.item()
                    sums += (step_d, step_g)
                    bar.set_postfix_str(f"loss_D {step_d:.3f} loss_G {step_g:.3f}", refresh=False,
                                        info={"loss_d": step_d, "loss_g": step_g})
                    bar.update(1)
                history.append({"epoch": epoch + 1, "loss_d": round(float(sums[0]) / steps_per_epoch, 4),
                                "loss_g": round(float(sums[1]) / steps_per_epoch, 4)})
                now = time.perf_counter()
                if epoch + 1 < p["epochs"] and now - last_save >= CHECKPOINT_SECONDS:
                    _save_checkpoint(checkpoint, {
                        "config": config, "epoch": epoch + 1, "history": history,
                        "seconds": seconds_before + now - t0, "rng": rng.get_state(),
                        "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                    })
                    last_save = now
        finally:
            bar.close()

        seconds = seconds_before + time.perf_counter() - t0
        generator.eval()
        _torch_save(folder / "generator.pt", {"config": config, "finished": True, "generator": generator.state_dict(),
                                              # fine-tunes start from the pretrained discriminator too
                                              **({"discriminator": discriminator.state_dict()}
                                                 if label == "pretrain" else {})})
        summary = {**config, "class": class_name, "epochs_done": p["epochs"], "steps": p["epochs"] * steps_per_epoch,
                   "seconds": round(seconds, 2), "images_per_second": round(p["epochs"] * n / max(seconds, 1e-9), 1),
                   "resumed_from_epoch": start_epoch, "device": str(device), **(initial or {}), "history": history}
        write_json(folder / "training.json", summary, indent=1)
        checkpoint.unlink(missing_ok=True)
        _save_grid(generator, folder / "samples.png", seed, label, device)
        del discriminator, opt_d, opt_g
        return generator

    # ---- generate ----------------------------------------------------------------------------------------

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        import torch

        sampling = self.samplings_.get(label)
        keys = [] if sampling is None else sampling.units()
        if not keys or any(key not in self.generators_ for key in keys):
            raise RuntimeError(f"augmenter {self.name!r} has no generator for class {label}; call fit with that "
                               "class among the chosen ones first")
        side = self.output_sides_[label]

        def make(unit, chosen: list[int]) -> list[np.ndarray]:  # image k's DCGAN: its cluster's, or the class's
            generator = self.generators_[unit]
            device = next(generator.parameters()).device
            # One image per forward pass: a batch-size-dependent kernel choice could change the last bit.
            return [_resize(_to_uint8(generator(_latents(seed, label, [k]).to(device)))[0], side) for k in chosen]

        with torch.no_grad():
            return sampling.gather(indices, make)

    def provenance(self, label: int, indices: Sequence[int]) -> list[dict] | None:
        return self.samplings_[label].provenance(indices)  # the cluster of each image under sampler: cluster

    def close(self) -> None:
        self.generators_.clear()
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- networks ----------------------------------------------------------------------------------------------


def _generator(side: int, width: int):
    from torch import nn

    # z (4x4 after the first layer) doubles to side/2, then the last layer makes RGB at side.
    mults = [2 ** i for i in reversed(range(int(np.log2(side)) - 2))]  # 64: 8, 4, 2, 1; 32: 4, 2, 1
    layers = [nn.ConvTranspose2d(LATENT, width * mults[0], 4, 1, 0, bias=False),
              nn.BatchNorm2d(width * mults[0]), nn.ReLU(True)]
    for a, b in zip(mults, mults[1:]):
        layers += [nn.ConvTranspose2d(width * a, width * b, 4, 2, 1, bias=False), nn.BatchNorm2d(width * b),
                   nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(width * mults[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def _discriminator(side: int, width: int):
    from torch import nn

    mults = [2 ** i for i in range(int(np.log2(side)) - 2)]  # 64: 1, 2, 4, 8; 32: 1, 2, 4
    layers = [nn.Conv2d(3, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for a, b in zip(mults, mults[1:]):
        layers += [nn.Conv2d(width * a, width * b, 4, 2, 1, bias=False), nn.BatchNorm2d(width * b),
                   nn.LeakyReLU(0.2, True)]
    # A logit; BCEWithLogitsLoss applies the paper's sigmoid in a numerically stable way.
    layers += [nn.Conv2d(width * mults[-1], 1, 4, 1, 0, bias=False), nn.Flatten(0)]
    return nn.Sequential(*layers)


def _init_weights(net, rng) -> None:
    from torch import nn

    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02, generator=rng)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02, generator=rng)
            nn.init.zeros_(module.bias)


# ---- helpers -----------------------------------------------------------------------------------------------


def _latents(seed: int, label: int, indices: Sequence[int]):
    import torch

    return torch.stack([torch.randn(LATENT, 1, 1, generator=torch.Generator().manual_seed(
        image_seed(seed, label, k, "dcgan"))) for k in indices])


def _to_uint8(images) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == side and image.shape[1] == side:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))


def _torch_save(path: Path, obj) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _save_checkpoint(path: Path, state: dict) -> None:
    _torch_save(path, state)


def _load_checkpoint(path: Path, config: dict, what: str = "DCGAN") -> dict | None:
    """The checkpoint of this exact training (``what``'s, for the warning), else None (a damaged or
    foreign one is discarded)."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config") == config:
            return state
        reason = "it belongs to other settings"
    except Exception as exc:
        reason = f"it cannot be read: {exc}"
    warnings.warn(f"discarding {what} checkpoint {path} ({reason}); training from the start", stacklevel=2)
    path.unlink(missing_ok=True)
    return None


def _save_grid(generator, path: Path, seed: int, label: int, device, rows: int = 8) -> None:
    import torch
    from PIL import Image

    with torch.no_grad():
        images = _to_uint8(generator(_latents(seed, label, range(rows * rows)).to(device)))
    side = images.shape[1]
    grid = images.reshape(rows, rows, side, side, 3).transpose(0, 2, 1, 3, 4).reshape(rows * side, rows * side, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid)).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


@contextlib.contextmanager
def _threads():
    """Train on no more threads than the CPUs this process may use (torch counts the host's cores, which
    a container's CPU limit can make too many), then give torch's global setting back."""
    import torch

    before = torch.get_num_threads()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or before
    torch.set_num_threads(max(1, min(before, cpus)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
