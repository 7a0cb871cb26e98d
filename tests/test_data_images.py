"""Safe image opening and the visual-token budget (chexrl/data/images.py)."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexrl.data.images import (
    ImageError,
    open_image,
    prepare_image,
    prepare_images,
    smart_resize,
    target_size,
    visual_token_budget,
    visual_tokens,
)

NIH_SAMPLES = Path("/work/shared/data/nih-samples")


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_declared_size_is_refused_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 100_000, 100_000)
    with pytest.raises(ImageError, match=r"bomb\.png: image too large"):
        open_image(bomb)
    big = tmp_path / "big.png"  # under PIL's own bomb limit, over chexrl's
    _png_header_only(big, 8000, 8000)
    with pytest.raises(ImageError, match=r"big\.png: image too large: 8000x8000"):
        open_image(big)
    with pytest.raises(ImageError, match="image too large"):
        open_image(NIH_SAMPLES / "00000001_000.png", max_pixels=512 * 511)


def test_truncated_and_corrupt_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:2000])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    for p in (cut, junk, tmp_path / "missing.png"):
        with pytest.raises(ImageError, match=p.name):
            open_image(p)
    images, errors = prepare_images([good, cut, junk])
    assert images[0] is not None and images[1] is None and images[2] is None and len(errors) == 2


def test_modes_become_rgb(tmp_path):
    arr16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "x16.png")
    Image.new("RGBA", (40, 30), (10, 20, 30, 255)).save(tmp_path / "rgba.png")
    Image.new("L", (40, 30), 77).save(tmp_path / "gray.jpg")
    for name in ("x16.png", "rgba.png", "gray.jpg"):
        img = open_image(tmp_path / name)
        assert img.mode == "RGB"
    a = np.asarray(open_image(tmp_path / "x16.png"))
    assert a.min() == 0 and a.max() == 255  # 16-bit range rescaled, not clipped


def test_token_budget_math():
    assert visual_token_budget("qwen2_5_vl", 256, 512) == {"min_pixels": 256 * 784, "max_pixels": 512 * 784}
    assert visual_token_budget("medgemma") == {"do_pan_and_scan": False}
    for h, w in [
        (64, 64),
        (128, 128),
        (512, 512),
        (1024, 1024),
        (3056, 2544),
        (2048, 2500),
        (320, 390),
        (100, 3000),
    ]:
        th, tw = smart_resize(h, w)
        assert th % 28 == 0 and tw % 28 == 0
        assert 256 <= visual_tokens("qwen", h, w) <= 512
        assert visual_tokens("gemma3", h, w) == 256 and target_size("gemma3", h, w) == (896, 896)
    assert visual_tokens("qwen", 1024, 1024, min_tokens=16, max_tokens=16) <= 16
    with pytest.raises(ValueError):
        visual_token_budget("llava")
    with pytest.raises(ValueError):
        visual_token_budget("qwen", 600, 512)


def test_real_nih_samples_prepare():
    for name in ("00000001_000.png", "00027426_000.png"):
        img = prepare_image(NIH_SAMPLES / name, family="qwen2_5_vl")
        assert img.mode == "RGB" and img.size == (504, 504)  # 18 x 18 = 324 tokens
        assert prepare_image(NIH_SAMPLES / name, family="gemma3").size == (896, 896)
