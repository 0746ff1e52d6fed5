"""Bounded decoding: the pixel limit, the shared memory budget, decompression bombs under a memory
watchdog, and the pixels of ordinary images, which the embedding cache depends on (unchanged)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

import automl.images as images
from automl.data import load_dataset
from automl.errors import DataError
from automl.images import DECODE_VERSION, DecodeError, MemoryBudget, decode, decode_array, probe
from bombs import png_bomb
from conftest import ROOT, class_folders, write_image

# --- ordinary images decode to the same pixels as before ---------------------------------------------


def _pattern(w, h, channels, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [(x * (200 + 20 * c) // max(w, 1) + y * (120 + 30 * c) // max(h, 1)) % 256 for c in range(channels)]
    arr = np.stack(base, axis=-1).astype(np.int32) + rng.integers(-25, 26, (h, w, channels))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _rgb(w, h, seed):
    return Image.fromarray(_pattern(w, h, 3, seed), "RGB")


def _grey(w, h, seed):
    return Image.fromarray(_pattern(w, h, 1, seed)[:, :, 0], "L")


def _encode(im, fmt, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _ordinary(name: str) -> bytes:
    """The images of ORDINARY, generated (seeded) rather than stored: every mode and format the
    decoder treats differently, small and large (JPEG draft), EXIF-rotated."""
    exif = Image.Exif()
    exif[0x0112] = 3 if name.endswith(".png") else 6
    rgba = _pattern(700, 500, 4, 7)
    rgba[:, :, 3] = np.linspace(0, 255, 700, dtype=np.uint8)[None, :]
    r16 = np.random.default_rng(9).integers(300, 3800, (600, 800)).astype(np.uint16)
    f32 = np.random.default_rng(10).normal(0, 1, (50, 70)).astype(np.float32)
    f32[3, 4] = np.nan
    make = {
        "rgb-small.png": lambda: _encode(_rgb(30, 20, 1), "PNG"),
        "rgb-large.png": lambda: _encode(_rgb(1100, 800, 2), "PNG"),
        "l.png": lambda: _encode(_grey(640, 480, 3), "PNG"),
        "1bit.png": lambda: _encode(_grey(64, 48, 4).convert("1"), "PNG"),
        "p.png": lambda: _encode(_rgb(500, 400, 5).quantize(64), "PNG"),
        "p-transparent.png": lambda: _encode(_rgb(120, 90, 6).quantize(32), "PNG", transparency=3),
        "rgba.png": lambda: _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "la.png": lambda: _encode(Image.fromarray(_pattern(90, 60, 2, 8), "LA"), "PNG"),
        "i16-large.png": lambda: _encode(Image.fromarray(r16), "PNG"),
        "i16-small.tif": lambda: _encode(Image.fromarray(r16[:40, :50]), "TIFF"),
        "float.tif": lambda: _encode(Image.fromarray(f32, "F"), "TIFF"),
        "rgb.tif": lambda: _encode(_rgb(320, 240, 11), "TIFF", compression="tiff_deflate"),
        "rgb.bmp": lambda: _encode(_rgb(333, 222, 12), "BMP"),
        "one-pixel.png": lambda: _encode(_rgb(1, 1, 13), "PNG"),
        "long.png": lambda: _encode(_rgb(3000, 40, 14), "PNG"),
        "rgb-small.jpg": lambda: _encode(_rgb(40, 30, 15), "JPEG", quality=90),
        "rgb-large.jpg": lambda: _encode(_rgb(2000, 1500, 16), "JPEG", quality=90),
        "rgb-progressive.jpg": lambda: _encode(_rgb(1600, 1200, 17), "JPEG", quality=85, progressive=True),
        "l-large.jpg": lambda: _encode(_grey(1800, 1300, 18), "JPEG", quality=90),
        "cmyk-small.jpg": lambda: _encode(_rgb(60, 40, 19).convert("CMYK"), "JPEG", quality=90),
        "cmyk-large.jpg": lambda: _encode(_rgb(1400, 1000, 20).convert("CMYK"), "JPEG", quality=90),
        "exif-rotated.jpg": lambda: _encode(_rgb(900, 500, 21), "JPEG", quality=90, exif=exif),
        "exif-rotated.png": lambda: _encode(_rgb(200, 100, 22), "PNG", exif=exif),
    }
    return make[name]()


# Digests of decode(bytes, size) for size None, 75 and 299, computed with the decoder as it was before
# decoding was bounded (commit efe1239), and, for JPEGs, the digest of the file those came from.
ORDINARY = {
    "rgb-small.png": ("5dda00e2b391cda9", ("345e7708cd64695e9e020f61", "f0d64d606cfd8877903bc31f", "0d88700e54e4691e68bed600")),
    "rgb-large.png": ("7918157f7ab0731f", ("4520f871d87762f60303dc1f", "8881a927a1730896f447c524", "19f8b7d816798b6804f9040d")),
    "l.png": ("78b9b641a617abe0", ("3a1eca14a0955f07e9e8a356", "3e0b99bd21a186454dd3b529", "5239ffb1d3aa6d2975905afd")),
    "1bit.png": ("1d1bdda4f5c64f45", ("c6029914b58d9e8e57402df0", "cfa1d47871c3dec658dbb9d7", "fdf31433f6eda7bc5ee1b1ea")),
    "p.png": ("bae5c52a1e53c7a5", ("740866baef6a346b62d53271", "280e59358f7fd7efc2013061", "62c4574f09853eee3ecc0168")),
    "p-transparent.png": ("454392c82bc023ee", ("7c0a9429e2c5e509c961b2bb", "feb9540218617400fba61723", "42b2283d29813b05ac15de4c")),
    "rgba.png": ("9558117925a2e1f0", ("27c93688301dd6c1e365c05f", "5e16188dca73a3689db99d13", "322ecc5b1042add1bfee65b0")),
    "la.png": ("52e9ffa8bb7847da", ("10756ab02a3d8b249eb492e7", "97ddbcff27119f9ccf73e1ad", "ab8a217ab41bafb084d1ddc3")),
    "i16-large.png": ("e6aebba7c0fb3bf0", ("9cdaf081e48ac2e2cdbd160c", "0e26a64bd56f21987e59ee3c", "4db79dde6a1fc8efa89bd817")),
    "i16-small.tif": ("fd4dec99760511e1", ("f549ae2ae07146b52e77cc3d", "b72dce8fce8f3b6a25d64d32", "8ade1ce62b0eb115015e57f6")),
    "float.tif": ("b49b3c4f4b61c113", ("06103be1fe2f0c1c05870e29", "594f5325587702cccc1de09f", "ad36e909518136499964e93d")),
    "rgb.tif": ("a9972d080d3b7a0c", ("15d8e70e72dfae5c9927260d", "607ee92a45c2e9679d837add", "eff927011ea824cc51e599d0")),
    "rgb.bmp": ("185987bcac214b73", ("c7ebb834e2171a6cbea22c04", "5dd5636e4ceb59d89d970346", "6950d361434912d77f55f53b")),
    "one-pixel.png": ("c36b9bea44c5b1f8", ("c19ee02a071e487d900fe478", "c8f205716bab2a50b44869fa", "7405d6b61c1e9675e9be1859")),
    "long.png": ("50a11d4bd1270597", ("e664b84f61532e6b8411000c", "c57b9898e5fb84ae40894765", "89213ebe360da4be3ed29dae")),
    "rgb-small.jpg": ("0a1428ef86d7628a", ("fbbf19fc3bf0e72e8a2c8d27", "9716daf976ee2a4f23129694", "bf77ab2fb7fb88e69da75eed")),
    "rgb-large.jpg": ("eb2177c8e67ea6c5", ("a0157d4770e0961883499b88", "8aa2ffa052f453e9a2de773c", "09a0b8c984801b97e546eb3d")),
    "rgb-progressive.jpg": ("381dc1d9805707e7", ("09d2059f81e1d3552e770211", "12134bbe4aee23359d0dbc63", "5190adaba4e809bce9bd1828")),
    "l-large.jpg": ("73f10d00e840b27a", ("fb6f47b9d1c635e6dafa7587", "2c02b98551479f95b014f84d", "b847230d41893b57cb7cac73")),
    "cmyk-small.jpg": ("40620fd1dff87d9d", ("3a3becbf02125b6cb97e6c3f", "83a35ae7f4b868d48d4610b8", "e9e9a9f38ac57f19d6e2ddc0")),
    "cmyk-large.jpg": ("e4bc6e4890f8e241", ("79b0278406e6f377e43ad9a6", "9050aebd89969bbab5c10f99", "9f78719c044039a4a3856a56")),
    "exif-rotated.jpg": ("c18ca2627dc340ab", ("8b83bdd71bcd7b5fcdcaaa42", "a25811a1ff7b8915c6c4809e", "9f1f6097438e5a31c077479e")),
    "exif-rotated.png": ("4e567241c8c4a61c", ("e847086c1628ccbbcc97624d", "89f926e4a73a60cbe86269c6", "1107d31787d235dba6c96143")),
}
ORDINARY_ARRAYS = {
    "gray-u8": ("857eafcc60c7d597a6481e15", "369ccbaa23b03ccff755d6a4", "a0f1311176775c7343bdaf7b"),
    "gray-u8-c1": ("039b29612a92c461eec19c87", "3dd9cfd9423861ce717fb8a5", "c7e41a731f595d34f17d356c"),
    "rgb-u8": ("e521e4f07b8851366ed70ed7", "0b3d03ce7f3133adbc8eb9b1", "e624b5e95718adaa1002adcd"),
    "rgba-u8": ("a5f4aa362d46bab623c1b309", "596e5d98d3d4a44e78dc6446", "4f6d9c51c0320c99fbf825a5"),
    "gray-u16": ("e81d738301574d2bd05322a5", "bf5341b1d9e621247f1b4762", "e496a22857ce07977af609b6"),
    "gray-f32": ("3e0547cea2abfdc02774b316", "ad45bcfe757f72654f391bc9", "362bc39f89e5d5f575d15494"),
}


def _digest(pixels: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def test_decode_version_is_unchanged():
    assert DECODE_VERSION == 1  # bump it (and ORDINARY) only when the decoded pixels change


@pytest.mark.parametrize("name", sorted(ORDINARY))
def test_ordinary_images_decode_to_the_pixels_they_always_did(name):
    data = _ordinary(name)
    file_digest, expected = ORDINARY[name]
    if name.endswith(".jpg") and hashlib.blake2b(data, digest_size=8).hexdigest() != file_digest:
        # Lossless formats decode to the pattern whatever the encoder; a JPEG is only comparable
        # when this Pillow's encoder wrote the same file.
        pytest.skip(f"this Pillow's JPEG encoder writes {name} differently from the one the digests came from")
    assert tuple(_digest(decode(data, size)) for size in (None, 75, 299)) == expected


def test_ordinary_arrays_decode_to_the_pixels_they_always_did():
    rng = np.random.default_rng(30)
    arrays = {
        "gray-u8": rng.integers(0, 256, (28, 28), dtype=np.uint8),
        "gray-u8-c1": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
        "rgb-u8": rng.integers(0, 256, (64, 48, 3), dtype=np.uint8),
        "rgba-u8": rng.integers(0, 256, (40, 40, 4), dtype=np.uint8),
        "gray-u16": rng.integers(100, 5000, (50, 60), dtype=np.uint16),
        "gray-f32": rng.normal(0, 1, (30, 30)).astype(np.float32),
    }
    for name, pixels in arrays.items():
        assert tuple(_digest(decode_array(pixels, size)) for size in (None, 75, 299)) == ORDINARY_ARRAYS[name], name


def test_stretch_in_strips_equals_the_whole_array(monkeypatch):
    values = np.random.default_rng(0).normal(0, 1000, (300, 200)).astype(np.float32)
    values[5, 5], values[7, 9], values[250, 3] = np.nan, np.inf, -np.inf
    whole = images._stretch(values)
    monkeypatch.setattr(images, "_STRIP_ELEMENTS", 1000)  # five rows a strip
    assert np.array_equal(images._stretch(values), whole)
    assert whole.min() == 0 and whole.max() == 255


# --- the pixel limit -------------------------------------------------------------------------------


@pytest.mark.parametrize("side, pillow", [(10000, "would warn"), (28000, "refuses to open it")])
def test_a_bomb_is_named_with_its_size_and_the_fix_before_pillow_warns(side, pillow):
    data = png_bomb(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would only repeat the error
        with pytest.raises(DecodeError, match=rf"{side}x{side} PNG is {side * side / 1e6:.1f} Mpx, above the decode "
                                              r"limit of 89\.5 Mpx \(automl\.images\.MAX_PIXELS.*downscale it to "
                                              r"9459x9459 or smaller"):
            probe(data)
        with pytest.raises(DecodeError, match=f"{side}x{side}"):
            decode(data, 75)


def test_images_above_the_limit_are_refused_from_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    data = class_folders(tmp_path / "data", {"a": 3, "b": 3})
    big = write_image(data / "a" / "big.png", size=(150, 100))
    tiff = write_image(data / "b" / "big.tif", size=(101, 100), mode="L", fmt="TIFF")
    with pytest.raises(DataError) as caught:
        load_dataset(data)
    message = str(caught.value)
    assert f"{big}: 150x100 PNG is 0.0 Mpx, above the decode limit" in message
    assert f"{tiff}: 101x100 TIFF" in message and "downscale it to 100x99 or smaller" in message
    assert "pass --skip-bad" in message
    ds = load_dataset(data, skip_bad=True)
    assert sorted(b.path for b in ds.bad_files) == sorted([str(big), str(tiff)])
    assert len(ds.items) == 6


def test_a_large_jpeg_decodes_at_reduced_scale_but_not_at_full_size(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    data = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    path = data / "a" / "scan.jpg"
    _rgb(400, 300, 0).save(path, quality=90)  # 12x the limit; 1/8 scale is 50 x 38
    ds = load_dataset(data)  # a JPEG passes the header check when its smallest scale fits
    item = next(it for it in ds.items if it.path == str(path))
    assert item.load(32).shape == (32, 32, 3)
    with pytest.raises(DataError, match=r"cannot decode image .*scan\.jpg: 400x300 JPEG is 0\.1 Mpx, above the "
                                        r"decode limit.*downscale it to 115x86 or smaller"):
        item.load(None)  # full size: nothing reduces it


def test_loading_a_dataset_decodes_no_pixels(tmp_path, monkeypatch):
    data = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    write_image(data / "a" / "x.jpg", size=(900, 700))
    write_image(data / "b" / "x.tif", size=(50, 40), mode="I;16", fmt="TIFF")
    (data / "b" / "bomb.png").write_bytes(png_bomb(20000, 20000))

    def refuse(self, *args, **kwargs):
        raise AssertionError("load_dataset decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    ds = load_dataset(data, skip_bad=True)
    assert len(ds.items) == 6
    assert [b.path for b in ds.bad_files] == [str(data / "b" / "bomb.png")]
    assert "20000x20000 PNG" in ds.bad_files[0].reason


def test_unidentified_bytes_do_not_show_a_buffer_repr():
    with pytest.raises(DecodeError) as caught:
        probe(b"not an image at all")
    assert "BytesIO" not in str(caught.value) and "not an image format" in str(caught.value)


# --- the memory budget -----------------------------------------------------------------------------


def test_budget_holds_by_bytes_in_arrival_order_and_lets_an_oversized_one_run_alone():
    budget = MemoryBudget(100)
    order, inside = [], []
    release = {name: threading.Event() for name in ("a", "b", "c", "d")}

    def work(name, nbytes):
        with budget.hold(nbytes):
            inside.append(name)
            order.append(name)
            release[name].wait(10)
            inside.remove(name)

    def started(name, nbytes):
        t = threading.Thread(target=work, args=(name, nbytes))
        t.start()
        return t

    def wait_for(cond):
        for _ in range(1000):
            if cond():
                return
            threading.Event().wait(0.005)
        raise AssertionError("timed out")

    a = started("a", 60)
    wait_for(lambda: order == ["a"])
    big = started("c", 500)  # larger than the whole budget: waits until nothing is held
    wait_for(lambda: budget._queue)
    b = started("b", 30)  # would fit beside a, but c came first
    wait_for(lambda: len(budget._queue) == 2)
    assert inside == ["a"]
    release["a"].set()
    wait_for(lambda: order == ["a", "c"])
    assert inside == ["c"] and budget.used == 500
    release["c"].set()
    wait_for(lambda: order == ["a", "c", "b"])
    release["b"].set()
    for t in (a, big, b):
        t.join(10)
    assert budget.used == 0 and budget.peak == 500


def test_decodes_in_flight_stay_within_the_budget(tmp_path, monkeypatch):
    budget = MemoryBudget(images.decode_cost(300, 300, "RGB") * 2)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    files = [_encode(_rgb(300, 300, i), "PNG") for i in range(12)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        out = list(pool.map(lambda d: decode(d, 32), files))
    assert len(out) == 12 and budget.used == 0
    assert images.decode_cost(300, 300, "RGB") <= budget.peak <= budget.limit


# --- decompression bombs under a memory watchdog --------------------------------------------------

CHILD = r'''
import json, resource, sys
from pathlib import Path

import numpy as np

from automl.data import Item, load_dataset
from automl.embed import embed_items
from automl.errors import DataError
from automl.extractors import Extractor, ExtractorKey
from automl.store import Store

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

data, store, headroom = Path(sys.argv[1]), Store(sys.argv[2]), int(sys.argv[3])
# The watchdog: address space beyond what the run may use (threads' stacks and arenas included)
# fails an allocation instead of letting a regression swap the machine.
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + headroom, resource.RLIM_INFINITY))
before = rss_mib()
out = {}
try:
    load_dataset(data)
except DataError as exc:
    out["refused"] = str(exc)
ds = load_dataset(data, skip_bad=True)
out["skipped"] = {b.path: b.reason for b in ds.bad_files}
# A bomb that reaches decoding (a file replaced after loading) is refused there, by embed's threads.
late = [Item(str(p), 0, "train", "late-" + p.name, 1, 1, "L") for p in sorted(data.glob("*/bomb-*.png"))]
key = ExtractorKey("fake", "random:seed=0", 32, "float32", "none")
build = lambda: Extractor(key, 3, type("Mean", (), {"predict_on_batch": lambda self, x: x.mean(axis=(1, 2))})(),
                          preprocess=lambda x: x)
result = embed_items(ds.items + late, key, store.embedding_cache, build, skip_bad=True, progress=False,
                     batch_size=4)
out.update(embedded=len(result.kept), late={b.path: b.reason for b in result.bad_files},
           rss_before_mib=before, rss_peak_mib=rss_mib())
print(json.dumps(out))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc and sets RLIMIT_AS")
def test_decompression_bombs_under_a_memory_watchdog(tmp_path):
    data = class_folders(tmp_path / "data", {"a": 5, "b": 5}, size=(64, 48))
    bombs = [data / "a" / f"bomb-{i}.png" for i in range(3)] + [data / "b" / "bomb-3.png"]
    for i, path in enumerate(bombs):  # 400 Mpx each: about 5 GB apiece as the decoder was
        path.write_bytes(png_bomb(20000, 20000, channels=1 if i < 3 else 3, tag=str(i)))
    near = data / "b" / "near-limit.png"  # just under the limit: accepted, decoded within the budget
    near.write_bytes(png_bomb(9000, 9000, channels=3))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data), str(tmp_path / "store"), str(3 << 30)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in bombs:
        assert f"{path}: 20000x20000 PNG is 400.0 Mpx, above the decode limit" in out["refused"]
        assert "downscale it to 9459x9459 or smaller" in out["skipped"][str(path)]
        assert "above the decode limit" in out["late"][str(path)]
    assert str(near) not in out["skipped"] and out["embedded"] == 11
    grown = out["rss_peak_mib"] - out["rss_before_mib"]
    assert grown < 1024, f"peak RSS grew by {grown:.0f} MiB with the bombs"
