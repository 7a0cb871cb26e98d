"""Drawing of synthetic chest radiographs: a lung-field-like background plus one big, distinct visual sign
per CheXpert label, and the acquisition look of a site (gamma, noise, blur, collimation, rotation).

Every sign has its own place (`SIGNAL_BOXES`, normalised x0, y0, x1, y1 with y down, as seen on the
film: the patient's right lung is on the image's left) and survives downscaling to 64x64 (the demo's tiny
model). Signs are caricatures, not radiology: they exist so a small model has something real to learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# Where each sign is strongest; tests compare mean intensity inside these boxes with and without the label.
SIGNAL_BOXES: dict[str, tuple[float, float, float, float]] = {
    "Lung Lesion": (0.23, 0.21, 0.31, 0.29),  # round bright nodule/mass, upper zone of the image-left lung
    "Atelectasis": (0.18, 0.385, 0.36, 0.435),  # plate-like horizontal band, mid zone, image-left lung
    "Consolidation": (0.21, 0.54, 0.33, 0.62),  # dense patch with dark air bronchograms, lower-mid, left
    "Pleural Effusion": (0.12, 0.74, 0.38, 0.82),  # white fluid with a meniscus at the left base
    "Pleural Other": (0.11, 0.30, 0.145, 0.55),  # thickened pleura along the left lateral wall
    "Pneumothorax": (0.70, 0.17, 0.82, 0.27),  # black rim without lung markings, image-right apex
    "Lung Opacity": (0.69, 0.37, 0.77, 0.45),  # soft haze, mid zone, image-right lung
    "Pneumonia": (0.79, 0.51, 0.87, 0.59),  # mottled blotches, lower lateral, image-right lung
    "Edema": (0.74, 0.71, 0.84, 0.79),  # basal haze with horizontal Kerley lines, image-right base
    "Enlarged Cardiomediastinum": (0.36, 0.16, 0.41, 0.40),  # widened upper mediastinum
    "Cardiomegaly": (0.645, 0.62, 0.69, 0.71),  # heart border pushed out to the image right
    "Fracture": (0.85, 0.37, 0.92, 0.47),  # displaced bright rib fragments, right lateral wall
    "Support Devices": (0.115, 0.10, 0.175, 0.15),  # pacemaker box (plus a tube down the midline)
}


@dataclass(frozen=True)
class Acquisition:
    """How a site's images look. Site A (default) is clean; `SHIFTS` in synth.py hold the others."""

    gamma: float = 1.0  # out = in ** gamma
    contrast: float = 1.0  # scale around mid-gray
    noise: float = 0.015  # Gaussian noise std on [0, 1]
    blur: float = 0.4  # Gaussian blur radius in pixels at 128 px (scaled with the size)
    border: tuple[float, float] = (0.0, 0.0)  # black collimation border, share of the side (min, max)
    rotation: float = 0.0  # max |degrees|
    scale: tuple[float, float] = (1.0, 1.0)  # zoom range
    invert: bool = False  # inverted polarity (bone dark)
    marker: bool = False  # burnt-in laterality marker block, top right


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _ellipse(xx, yy, cx, cy, rx, ry, soft: float = 0.08) -> np.ndarray:
    """1 inside, 0 outside, a soft edge of relative width `soft`."""
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - d) / soft + 0.5, 0.0, 1.0)


def _box(xx, yy, x0, y0, x1, y1) -> np.ndarray:
    return ((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)).astype(np.float32)


def _background(xx, yy, rng: np.random.Generator, labels: frozenset[str]) -> np.ndarray:
    """Body, two dark lung fields with rib shadows, spine, mediastinum, heart, diaphragm."""
    j = lambda s: float(rng.uniform(-s, s))  # noqa: E731  small anatomical jitter
    img = np.full_like(xx, 0.05)  # air outside the body
    body = _ellipse(xx, yy, 0.5, 0.52, 0.49 + j(0.01), 0.58, soft=0.05)
    img = img + body * 0.50
    lung_value = 0.13 if "Emphysema" in labels else 0.22
    lungs = np.maximum(
        _ellipse(xx, yy, 0.27 + j(0.01), 0.48, 0.16, 0.33), _ellipse(xx, yy, 0.73 + j(0.01), 0.48, 0.16, 0.33)
    )
    img = img * (1 - lungs) + lungs * lung_value
    rib_y = yy - 0.35 * (xx - 0.5) ** 2
    ribs = np.clip(np.sin(2 * np.pi * (rib_y * 9.0 + j(0.2))), 0, 1) ** 2
    img = img + 0.07 * ribs * lungs
    media_w = 0.15 if "Enlarged Cardiomediastinum" in labels else 0.07
    media = _box(xx, yy, 0.5 - media_w, 0.08, 0.5 + media_w, 0.56)
    img = np.maximum(img, media * 0.60)
    rx, ry = (0.18, 0.12) if "Cardiomegaly" in labels else (0.11, 0.09)
    img = np.maximum(img, _ellipse(xx, yy, 0.52, 0.67, rx, ry) * 0.62)
    img = np.maximum(img, _box(xx, yy, 0.47, 0.0, 0.53, 1.0) * 0.70)  # spine
    dome = 0.82 - 0.05 * np.cos((xx - 0.5) * 2 * np.pi * 2)
    img = np.maximum(img, (yy > dome).astype(np.float32) * body * 0.64)
    for side in (-1, 1):  # clavicles
        clav = np.abs(yy - (0.10 + 0.10 * np.abs(xx - 0.5))) < 0.012
        img = np.maximum(img, (clav & (np.sign(xx - 0.5) == side) & (np.abs(xx - 0.5) < 0.33)) * 0.72)
    return img.astype(np.float32)


def _blobs(xx, yy, rng, cx, cy, radius, count, r_blob) -> np.ndarray:
    out = np.zeros_like(xx)
    for _ in range(count):
        a, r = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0, 1))
        out = np.maximum(out, _ellipse(xx, yy, cx + r * np.cos(a), cy + r * np.sin(a), r_blob, r_blob, 0.3))
    return out


def _draw_signs(img, xx, yy, rng: np.random.Generator, labels: frozenset[str], strength: dict[str, float]):
    """Paint each present label's sign. `strength` < 1 draws a fainter (uncertain) sign."""
    j = lambda s: float(rng.uniform(-s, s))  # noqa: E731
    s = lambda lab: strength.get(lab, 1.0)  # noqa: E731
    if "Lung Lesion" in labels:
        r = 0.06 if "Mass" in labels or "Nodule" not in labels else 0.045
        img = np.maximum(
            img, _ellipse(xx, yy, 0.27 + j(0.01), 0.25 + j(0.01), r, r, 0.15) * 0.85 * s("Lung Lesion")
        )
    if "Atelectasis" in labels:
        band = _box(xx, yy, 0.15, 0.375 + j(0.005), 0.40, 0.445 + j(0.005))
        img = np.maximum(img, band * 0.78 * s("Atelectasis"))
    if "Consolidation" in labels:
        patch = _ellipse(xx, yy, 0.27, 0.58, 0.09, 0.065, 0.2)
        bronchi = (np.abs(np.sin((xx - 0.27) * 70 + (yy - 0.58) * 25)) < 0.18) * patch * 0.22
        img = np.maximum(img, patch * 0.80 * s("Consolidation")) - bronchi * s("Consolidation")
    if "Pleural Effusion" in labels:
        level = 0.72 - 0.10 * np.clip((0.42 - xx) / 0.32, 0, 1) ** 2 + j(0.01)
        fluid = ((yy > level) & (xx > 0.07) & (xx < 0.43) & (yy < 0.86)).astype(np.float32)
        img = np.maximum(img, fluid * 0.80 * s("Pleural Effusion"))
    if "Pleural Other" in labels:
        img = np.maximum(img, _box(xx, yy, 0.10, 0.26, 0.155, 0.60) * 0.78 * s("Pleural Other"))
    if "Pneumothorax" in labels:
        ptx = _ellipse(xx, yy, 0.76 + j(0.01), 0.22, 0.12, 0.10, 0.1)
        img = img * (1 - ptx * s("Pneumothorax")) + ptx * 0.0
        edge = (np.abs(xx - (0.64 + 0.25 * (yy - 0.22) ** 2)) < 0.008) & (yy > 0.13) & (yy < 0.31)
        img = np.maximum(img, edge * 0.6 * s("Pneumothorax"))
    if "Lung Opacity" in labels:
        g = np.exp(-(((xx - 0.73) ** 2 + (yy - 0.41) ** 2) / (2 * 0.06**2)))
        img = img + g * 0.40 * s("Lung Opacity")
    if "Pneumonia" in labels:
        img = np.maximum(img, _blobs(xx, yy, rng, 0.83, 0.55, 0.05, 9, 0.025) * 0.80 * s("Pneumonia"))
    if "Edema" in labels:
        g = np.exp(-(((xx - 0.79) ** 2 + (yy - 0.75) ** 2) / (2 * 0.05**2)))
        kerley = (np.sin(yy * 2 * np.pi * 28) > 0.5) & (yy > 0.68) & (yy < 0.81) & (xx > 0.71) & (xx < 0.88)
        img = np.maximum(img + g * 0.30 * s("Edema"), kerley * 0.75 * s("Edema"))
    if "Fracture" in labels:
        frag = _box(xx, yy, 0.85, 0.37, 0.92, 0.405) + _box(xx, yy, 0.855, 0.425, 0.92, 0.46)
        img = np.maximum(img, np.clip(frag, 0, 1) * 0.95 * s("Fracture"))
    if "Support Devices" in labels:
        img = np.maximum(img, _box(xx, yy, 0.11, 0.095, 0.18, 0.155) * 1.0 * s("Support Devices"))
        img = np.maximum(img, _box(xx, yy, 0.445, 0.0, 0.46, 0.42) * 0.95 * s("Support Devices"))
    if "Fibrosis" in labels:
        net = (np.sin(xx * 90) * np.sin(yy * 90) > 0.6) & (yy < 0.3) & (np.abs(xx - 0.5) > 0.12)
        img = np.maximum(img, net * 0.5)
    if "Hernia" in labels:
        img = np.maximum(img, _ellipse(xx, yy, 0.5, 0.74, 0.05, 0.04) * 0.3)
    return img


def render_frontal(
    labels: frozenset[str], rng: np.random.Generator, size: int, strength: dict[str, float] | None = None
) -> np.ndarray:
    """A frontal radiograph, float32 (size, size) in [0, 1] before acquisition effects."""
    xx, yy = _grid(size)
    img = _background(xx, yy, rng, labels)
    img = _draw_signs(img, xx, yy, rng, labels, strength or {})
    return np.clip(img, 0.0, 1.0)


def render_lateral(rng: np.random.Generator, size: int) -> np.ndarray:
    """A lateral view: one lung field, spine at the back. Carries no signs (frontal filters drop it)."""
    xx, yy = _grid(size)
    img = np.full_like(xx, 0.05) + _ellipse(xx, yy, 0.5, 0.52, 0.40, 0.55, 0.05) * 0.5
    lung = _ellipse(xx, yy, 0.48 + float(rng.uniform(-0.02, 0.02)), 0.45, 0.26, 0.32)
    img = img * (1 - lung) + lung * 0.24
    img = np.maximum(img, _box(xx, yy, 0.78, 0.1, 0.84, 0.95) * 0.7)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def acquire(img: np.ndarray, rng: np.random.Generator, acq: Acquisition) -> Image.Image:
    """Apply a site's acquisition look and return an 8-bit grayscale PIL image."""
    size = img.shape[0]
    out = np.clip((img - 0.5) * acq.contrast + 0.5, 0, 1) ** acq.gamma
    out = np.clip(out + rng.normal(0.0, acq.noise, out.shape), 0, 1)
    pil = Image.fromarray((out * 255).astype(np.uint8), mode="L")
    if acq.rotation or acq.scale != (1.0, 1.0):
        angle = float(rng.uniform(-acq.rotation, acq.rotation))
        zoom = float(rng.uniform(*acq.scale))
        pil = pil.rotate(angle, resample=Image.BILINEAR, fillcolor=0)
        if zoom != 1.0:
            side = max(1, round(size * zoom))
            scaled = pil.resize((side, side), Image.BILINEAR)
            canvas = Image.new("L", (size, size), 0)
            off = (size - side) // 2
            if off >= 0:
                canvas.paste(scaled, (off, off))
            else:
                canvas.paste(scaled.crop((-off, -off, -off + size, -off + size)))
            pil = canvas
    if acq.blur > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(acq.blur * size / 128))
    arr = np.asarray(pil, dtype=np.uint8).copy()
    if acq.border[1] > 0:
        b = [round(size * rng.uniform(*acq.border)) for _ in range(4)]
        arr[: b[0]], arr[size - b[1] :], arr[:, : b[2]], arr[:, size - b[3] :] = 0, 0, 0, 0
    if acq.marker:
        m = max(2, size // 24)
        arr[m : 3 * m, size - 4 * m : size - 2 * m] = 250
    if acq.invert:
        arr = 255 - arr
    return Image.fromarray(arr, mode="L")
