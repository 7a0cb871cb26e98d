"""Image preparation: safe opening (size guard against decompression bombs, truncated or corrupt files,
16-bit / RGBA / palette / grayscale -> RGB) and the visual-token budget.

The paper constrains each image to 256-512 visual tokens "via the processor's minimum and maximum pixels".
For Qwen2.5-VL a token is a 2x2 merge of 14 px patches, i.e. 28x28 px, so min_pixels = 256*28*28 and
max_pixels = 512*28*28; `smart_resize` reproduces the processor's rounding so the count is known before
the processor runs. Gemma3 (MedGemma) always resizes to 896x896 -> 256 tokens (pan & scan off), so its
budget is fixed. Real-size radiographs (NIH 1024 px, MIMIC ~3000 px) go through the same code as the small
synthetic ones.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# Larger than any real chest radiograph (MIMIC's largest are about 4,300 x 3,500), far below a bomb.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
QWEN_PATCH, QWEN_MERGE = 14, 2
QWEN_FACTOR = QWEN_PATCH * QWEN_MERGE  # 28 px per visual token side
GEMMA3_SIZE, GEMMA3_TOKENS = 896, 256
FAMILIES = {
    "qwen2_5_vl": "qwen",
    "qwen": "qwen",
    "qwen2.5-vl": "qwen",
    "gemma3": "gemma",
    "medgemma": "gemma",
    "gemma": "gemma",
}


class ImageError(ValueError):
    """An image that cannot be used; the message names the file."""


def _family(family: str) -> str:
    try:
        return FAMILIES[family.lower()]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}") from None


def open_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a file (path) or encoded image (bytes), fully decode it and convert to RGB, or raise
    `ImageError` naming the file.

    The declared size is checked from the header before any pixel is decoded, so a file claiming
    100,000 x 100,000 pixels costs nothing.
    """
    if isinstance(source, bytes):
        name, stream = "image bytes", io.BytesIO(source)
        if not source:
            raise ImageError("image bytes: empty")
    else:
        name = stream = Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: image too large: {w}x{h} = {w * h:,} pixels, limit {max_pixels:,}")
            img.load()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            f"{name}: image too large, refused as a possible decompression bomb ({err})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated, corrupt, not an image
        raise ImageError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as the VLM processors expect. 16-bit and float images are rescaled by their own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img if img.mode == "RGB" else img.convert("RGB")


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = 256 * 28 * 28,
    max_pixels: int = 512 * 28 * 28,
) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule: sides multiple of `factor`, area within [min_pixels, max_pixels].

    >>> smart_resize(1024, 1024)  # an NIH image: 22 x 22 = 484 tokens
    (616, 616)
    >>> smart_resize(128, 128)  # a small synthetic image is scaled up to at least 256 tokens
    (448, 448)
    """
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise ValueError(f"unusable image shape {height}x{width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def visual_token_budget(family: str, min_tokens: int = 256, max_tokens: int = 512) -> dict:
    """Processor keyword arguments that hold an image to [min_tokens, max_tokens] visual tokens.

    >>> visual_token_budget("qwen2_5_vl")
    {'min_pixels': 200704, 'max_pixels': 401408}
    >>> visual_token_budget("medgemma")
    {'do_pan_and_scan': False}
    """
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"need 0 < min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if _family(family) == "qwen":
        per_token = QWEN_FACTOR * QWEN_FACTOR
        return {"min_pixels": min_tokens * per_token, "max_pixels": max_tokens * per_token}
    # Gemma3 has one fixed budget: 896x896 -> 256 tokens. Pan & scan would add crops (more tokens).
    return {"do_pan_and_scan": False}


def target_size(
    family: str, height: int, width: int, min_tokens: int = 256, max_tokens: int = 512
) -> tuple[int, int]:
    """(height, width) the processor will feed the vision tower."""
    if _family(family) == "gemma":
        return GEMMA3_SIZE, GEMMA3_SIZE
    budget = visual_token_budget(family, min_tokens, max_tokens)
    return smart_resize(height, width, QWEN_FACTOR, budget["min_pixels"], budget["max_pixels"])


def visual_tokens(family: str, height: int, width: int, min_tokens: int = 256, max_tokens: int = 512) -> int:
    """Visual tokens one image of this size costs.

    >>> visual_tokens("qwen", 3000, 2500), visual_tokens("gemma3", 3000, 2500)
    (480, 256)
    """
    if _family(family) == "gemma":
        return GEMMA3_TOKENS
    h, w = target_size(family, height, width, min_tokens, max_tokens)
    return (h // QWEN_FACTOR) * (w // QWEN_FACTOR)


def prepare_image(
    path: str | Path,
    family: str = "qwen2_5_vl",
    min_tokens: int = 256,
    max_tokens: int = 512,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Open safely and resize to the processor's own target, so a 3,000 px MIMIC film is not shipped whole."""
    img = open_image(path, max_pixels)
    h, w = target_size(family, img.height, img.width, min_tokens, max_tokens)
    return img if (img.height, img.width) == (h, w) else img.resize((w, h), Image.BICUBIC)


def prepare_images(paths, **kwargs) -> tuple[list[Image.Image | None], list[str]]:
    """Prepare many images; a bad one becomes None plus an error line instead of stopping the run."""
    images: list[Image.Image | None] = []
    errors: list[str] = []
    for p in paths:
        try:
            images.append(prepare_image(p, **kwargs))
        except ImageError as err:
            images.append(None)
            errors.append(str(err))
    return images, errors


def image_bytes(path: str | Path, max_side: int = 1024) -> bytes:
    """PNG bytes of the image, resized so its longer side is at most `max_side`: what a rollout prompt
    carries (the processor resizes further to the model's visual-token budget)."""
    img = open_image(path)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
