"""Drawing primitives of the synthetic scenes: textured shapes painted with an exact owner map.

Every painted pixel records which hierarchy node drew it last (an ``owner`` map), so the visible
mask of any node is exact whatever is drawn over it later: occlusion is simply overdrawing. Shapes
are rasterised with OpenCV without anti-aliasing (``LINE_8``), so a pixel belongs to exactly one
shape; softening happens afterwards on the colours only (see :mod:`.scenes`), never on the masks.

Colours are chosen in CIELAB (L in [0, 100], a and b in about [-80, 80]) so that "how different
two parts look" is a perceptual distance the generator controls (see :func:`jitter_lab`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

TEXTURE_KINDS = ("flat", "stripes", "checker", "dots", "noise", "shade")


@dataclass(frozen=True)
class Texture:
    """How a shape's pixels vary around its base colour.

    Attributes:
        kind: one of :data:`TEXTURE_KINDS`: a flat fill, stripes, a checkerboard, a dot grid,
            smooth value noise or a linear shading.
        amplitude: peak change of the Lab lightness (L units).
        period: stripe/checker/dot spacing in pixels.
        angle: orientation of stripes and shading in radians.
        seed: seed of the noise texture.
    """

    kind: str = "flat"
    amplitude: float = 0.0
    period: float = 6.0
    angle: float = 0.0
    seed: int = 0


def random_texture(rng: np.random.Generator, max_amplitude: float = 14.0) -> Texture:
    """A texture drawn uniformly from :data:`TEXTURE_KINDS` with a random strength and scale."""
    kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    return Texture(
        kind=kind,
        amplitude=0.0 if kind == "flat" else float(rng.uniform(0.4, 1.0) * max_amplitude),
        period=float(rng.uniform(3.0, 9.0)),
        angle=float(rng.uniform(0.0, math.pi)),
        seed=int(rng.integers(2**31)),
    )


def jitter_lab(color: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """A Lab colour at about ``distance`` (Euclidean, Lab units) from ``color``, kept in gamut-ish.

    The direction is random; lightness changes count half as much as chroma changes so that a
    jittered part does not drift to black or white.
    """
    direction = rng.normal(size=3)
    direction[0] *= 0.5
    direction /= np.linalg.norm(direction) + 1e-12
    out = np.asarray(color, dtype=np.float64) + distance * direction
    out[0] = np.clip(out[0], 8.0, 95.0)
    out[1:] = np.clip(out[1:], -75.0, 75.0)
    return out


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab colours (..., 3) -> RGB float32 (..., 3) in [0, 255] (D65, sRGB, clipped).

    Goes through OpenCV's 8-bit Lab (L x 255/100, a + 128, b + 128), about 20x faster than its
    float conversion; the rounding moves a colour by at most 0.2 L units / 0.5 a, b units.
    """
    lab = np.asarray(lab, dtype=np.float32)
    scaled = np.empty(lab.shape, dtype=np.float32)
    scaled[..., 0] = lab[..., 0] * (255.0 / 100.0)
    scaled[..., 1:] = lab[..., 1:] + 128.0
    quantized = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    image = quantized if quantized.ndim == 3 else quantized.reshape(1, -1, 3)  # rows, not pixels
    return cv2.cvtColor(image, cv2.COLOR_Lab2RGB).reshape(lab.shape).astype(np.float32)


def _texture_offset(texture: Texture, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Lightness offset (L units) of ``texture`` at the pixel coordinates ``ys, xs``."""
    if texture.kind == "flat" or texture.amplitude == 0.0:
        return np.zeros(ys.shape, dtype=np.float32)
    along = xs * math.cos(texture.angle) + ys * math.sin(texture.angle)
    if texture.kind == "stripes":
        wave = np.sign(np.sin(2.0 * math.pi * along / texture.period))
    elif texture.kind == "checker":
        wave = ((np.floor(xs / texture.period) + np.floor(ys / texture.period)) % 2) * 2.0 - 1.0
    elif texture.kind == "dots":
        cy = (ys % texture.period) - texture.period / 2.0
        cx = (xs % texture.period) - texture.period / 2.0
        wave = np.where(cy * cy + cx * cx < (texture.period / 3.5) ** 2, 1.0, -0.25)
    elif texture.kind == "noise":
        noise_rng = np.random.default_rng(texture.seed)
        cells = noise_rng.normal(size=(64, 64)).astype(np.float32)
        rows = (ys / texture.period).astype(np.int64) % 64
        columns = (xs / texture.period).astype(np.int64) % 64
        wave = np.clip(cells[rows, columns] * 0.6, -1.0, 1.0)
    elif texture.kind == "shade":
        span = float(np.ptp(along)) or 1.0
        wave = (along - along.min()) / span * 2.0 - 1.0
    else:
        raise ValueError(f"texture.kind: must be one of {', '.join(TEXTURE_KINDS)}, got {texture.kind!r}")
    return (texture.amplitude * wave).astype(np.float32)


class Canvas:
    """A Lab image being painted and the id of the hierarchy node that owns each pixel.

    Args:
        background: (H, W, 3) float32 Lab background (copied).

    Attributes:
        lab: (H, W, 3) float32 Lab colours.
        owner: (H, W) int32 node id of the last shape drawn on each pixel, -1 for background.
    """

    def __init__(self, background: np.ndarray) -> None:
        self.lab = np.array(background, dtype=np.float32)
        self.height, self.width = self.lab.shape[:2]
        self.owner = np.full((self.height, self.width), -1, dtype=np.int32)

    def blank(self) -> np.ndarray:
        """A zero uint8 (H, W) image to rasterise one shape into."""
        return np.zeros((self.height, self.width), dtype=np.uint8)

    def paint(self, node: int, mask: np.ndarray, color: np.ndarray, texture: Texture) -> int:
        """Paints the pixels of ``mask`` (non-zero) with ``color`` + ``texture``; returns the count.

        ``node < 0`` paints unannotated clutter: the pixels change colour and become background.
        """
        left, top, box_width, box_height = cv2.boundingRect(mask)
        if box_width == 0 or box_height == 0:
            return 0
        ys, xs = np.nonzero(mask[top : top + box_height, left : left + box_width])
        ys += top
        xs += left
        offset = _texture_offset(texture, ys.astype(np.float32), xs.astype(np.float32))
        values = np.empty((ys.size, 3), dtype=np.float32)
        values[:] = np.asarray(color, dtype=np.float32)
        values[:, 0] = np.clip(values[:, 0] + offset, 0.0, 100.0)
        self.lab[ys, xs] = values
        self.owner[ys, xs] = node
        return int(ys.size)

    # --- shapes: each returns the uint8 mask it painted ------------------------------------------

    def ellipse(
        self,
        node: int,
        center: tuple[float, float],
        axes: tuple[float, float],
        angle: float,
        color: np.ndarray,
        texture: Texture,
    ) -> np.ndarray:
        """A filled ellipse; ``center`` (x, y), ``axes`` half-widths in pixels, ``angle`` degrees."""
        mask = self.blank()
        cv2.ellipse(
            mask,
            _point(center),
            (max(1, round(axes[0])), max(1, round(axes[1]))),
            angle,
            0,
            360,
            1,
            -1,
            cv2.LINE_8,
        )
        self.paint(node, mask, color, texture)
        return mask

    def polygon(self, node: int, points: np.ndarray, color: np.ndarray, texture: Texture) -> np.ndarray:
        """A filled polygon of (N, 2) (x, y) vertices."""
        mask = self.blank()
        cv2.fillPoly(mask, [np.round(np.asarray(points)).astype(np.int32)], 1, cv2.LINE_8)
        self.paint(node, mask, color, texture)
        return mask

    def box(
        self,
        node: int,
        center: tuple[float, float],
        size: tuple[float, float],
        angle: float,
        color: np.ndarray,
        texture: Texture,
    ) -> np.ndarray:
        """A filled rectangle of ``size`` (w, h) rotated by ``angle`` degrees about ``center``."""
        corners = cv2.boxPoints(
            ((float(center[0]), float(center[1])), (float(size[0]), float(size[1])), angle)
        )
        return self.polygon(node, corners, color, texture)

    def limb(
        self,
        node: int,
        start: tuple[float, float],
        end: tuple[float, float],
        thickness: float,
        color: np.ndarray,
        texture: Texture,
    ) -> np.ndarray:
        """A thick segment with round ends (arms, legs, stems)."""
        mask = self.blank()
        cv2.line(mask, _point(start), _point(end), 1, max(1, round(thickness)), cv2.LINE_8)
        self.paint(node, mask, color, texture)
        return mask


def _point(xy: tuple[float, float]) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))
