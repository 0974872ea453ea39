"""Synthetic surveillance cameras: backgrounds, occluders and the photometric chain of one camera.

Each :class:`Camera` has its own scene (a wide background strip that per-image crops slide along),
illumination (gain, gamma, colour cast, saturation), optics (blur, noise, JPEG quality), framing
(person scale, which views it mostly sees) and how often something occludes the person. Images are
composed at a super-sampled size and shrunk at the end, which anti-aliases the PIL drawing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance

from cpl.synth.people import VIEWS, Identity, choose, draw_person, random_pose

SCENES = ("plaza", "street", "park", "indoor", "brick", "station")


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    scene: str  # one of SCENES
    horizon: float  # where the backdrop meets the ground, as a fraction of the crop height
    gain: float  # exposure: multiplies 8-bit intensities before the tone curve
    gamma: float  # applied after gain: out = in ** gamma (in [0, 1])
    cast: tuple[float, float, float]  # per-channel white-balance error
    saturation: float  # 1 = unchanged, 0 = grey
    blur: float  # 0 sharp .. 1 detail finer than 2 output pixels is gone
    noise: float  # amplitude of uniform sensor noise in 8-bit units
    quality: tuple[int, int]  # JPEG quality range
    scale: float  # mean person height / crop height
    views: tuple[float, float, float]  # probabilities of front, back, side
    occlusion: float  # probability that an occluder cuts into the crop


def _spread(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """[n] values in [lo, hi], one from each of n equal strata in random order (Latin hypercube).

    Cameras therefore always span the whole range, so how different they are, and with it how hard
    the dataset is, varies little from seed to seed.
    """
    return lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n


def random_cameras(rng: np.random.Generator, n: int) -> list[Camera]:
    """Draw the settings of ``n`` cameras; scenes are dealt without repeats while there are enough."""
    scenes = rng.permutation(len(SCENES))
    horizon, gain, gamma = _spread(rng, 0.3, 0.6, n), _spread(rng, 0.9, 1.1, n), _spread(rng, 0.92, 1.1, n)
    saturation, blur, noise = _spread(rng, 0.87, 1.05, n), _spread(rng, 0.0, 0.8, n), _spread(rng, 2.0, 10.0, n)
    quality, scale, occlusion = _spread(rng, 45, 80, n), _spread(rng, 0.84, 0.95, n), _spread(rng, 0.05, 0.25, n)
    cams = []
    for i in range(n):
        # A camera prefers one view (it looks along a path) but sees all three.
        views = rng.dirichlet([2.5, 2.5, 2.0])
        cast = rng.uniform(0.95, 1.05, 3)
        cast = cast / cast.mean()
        q_lo = int(quality[i])
        cams.append(Camera(
            scene=SCENES[int(scenes[i % len(SCENES)])],
            horizon=float(horizon[i]),
            gain=float(gain[i]),
            gamma=float(gamma[i]),
            cast=(float(cast[0]), float(cast[1]), float(cast[2])),
            saturation=float(saturation[i]),
            blur=float(blur[i]),
            noise=float(noise[i]),
            quality=(q_lo, q_lo + int(rng.integers(5, 15))),
            scale=float(scale[i]),
            views=(float(views[0]), float(views[1]), float(views[2])),
            occlusion=float(occlusion[i]),
        ))
    return cams


def pick_view(rng: np.random.Generator, cam: Camera) -> str:
    """A view (``front``, ``back`` or ``side``) drawn with the camera's view probabilities."""
    return choose(rng, VIEWS, cam.views)


# --------------------------------------------------------------------------------------------
# backgrounds


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """[h, w] float32 smooth random field in about [-1, 1], with blobs of ~``cell`` pixels."""
    low = rng.uniform(-1, 1, (max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    img = Image.fromarray(low, "F").resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC)
    return np.asarray(img)[cell:cell + h, cell:cell + w]


def _tiles(rng: np.random.Generator, h: int, w: int, period: int, line: float) -> np.ndarray:
    """[h, w] float32 brightness of a grid of slightly different tiles with darker joints."""
    yy, xx = np.mgrid[0:h, 0:w]
    table = rng.uniform(-0.08, 0.08, (h // period + 2, w // period + 2)).astype(np.float32)
    val = table[yy // period, xx // period]
    joint = ((yy % period) < 2) | ((xx % period) < 2)
    return np.where(joint, -line, val)


def _bricks(rng: np.random.Generator, h: int, w: int, bh: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    row = yy // bh
    bw = bh * 3
    shifted = xx + (row % 2) * (bw // 2)
    table = rng.uniform(-0.12, 0.12, (h // bh + 2, w // bw + 3)).astype(np.float32)
    val = table[row, shifted // bw]
    mortar = ((yy % bh) < 2) | ((shifted % bw) < 2)
    return np.where(mortar, 0.25, val)


def _layer(shade: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """[h, w, 3] float32: a colour modulated by a [h, w] relative brightness."""
    return colour[None, None, :] * (1.0 + shade[..., None])


# Each scene prefers one backdrop and one ground, but every camera also shows stretches of the others
# in the same muted palette: a camera is recognisable by its layout, not by a colour signature that
# a colour histogram could pick up (real re-ID cameras all look at the same grey campus).
_SCENE_PARTS = {
    "plaza": ("facade", "tiles"), "street": ("shopfront", "asphalt"), "park": ("foliage", "grass"),
    "indoor": ("wall", "floor"), "brick": ("brick", "tiles"), "station": ("pillars", "floor"),
}
_BACKDROPS = ("facade", "shopfront", "foliage", "wall", "brick", "pillars")
_GROUNDS = ("tiles", "asphalt", "grass", "floor")
_BACKDROP_RGB = {"facade": (165, 160, 155), "shopfront": (120, 112, 105), "foliage": (90, 110, 80),
                 "wall": (190, 185, 172), "brick": (140, 100, 85), "pillars": (115, 118, 125)}
_GROUND_RGB = {"tiles": (150, 146, 140), "asphalt": (88, 88, 92), "grass": (110, 125, 90), "floor": (165, 155, 140)}


def _texture(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """[h, w] float32 relative brightness of one backdrop or ground kind."""
    if kind == "tiles":
        return _tiles(rng, h, w, max(6, h // int(rng.integers(5, 10))), 0.12) + _smooth_noise(rng, h, w, 8) * 0.05
    if kind == "brick":
        return _bricks(rng, h, w, max(4, h // 26))
    if kind in ("foliage", "grass"):
        return _smooth_noise(rng, h, w, max(3, h // (12 if kind == "foliage" else 30))) * 0.3
    if kind == "asphalt":
        return _smooth_noise(rng, h, w, 2) * 0.06 + _smooth_noise(rng, h, w, 16) * 0.05
    return _smooth_noise(rng, h, w, max(6, h // 6)) * 0.08


def background(rng: np.random.Generator, cam: Camera, h: int, w: int) -> Image.Image:
    """RGB background strip of ``w`` x ``h`` pixels of camera ``cam``; images crop windows out of it.

    The strip is a row of segments (each a backdrop above a ground, meeting near ``cam.horizon``),
    then structure and clutter are drawn over it.
    """
    img = np.empty((h, w, 3), np.float32)
    prefer_back, prefer_ground = _SCENE_PARTS[cam.scene]
    horizons = []
    x0 = 0
    while x0 < w:
        x1 = min(w, x0 + int(rng.integers(h // 2, 2 * h)))
        back = prefer_back if rng.random() < 0.5 else _BACKDROPS[int(rng.integers(len(_BACKDROPS)))]
        ground = prefer_ground if rng.random() < 0.5 else _GROUNDS[int(rng.integers(len(_GROUNDS)))]
        hz = int((cam.horizon + rng.uniform(-0.06, 0.06)) * h)
        colour_b = np.clip(np.asarray(_BACKDROP_RGB[back], np.float32) + rng.uniform(-25, 25, 3), 0, 255)
        colour_g = np.clip(np.asarray(_GROUND_RGB[ground], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
        sw = x1 - x0
        img[:hz, x0:x1] = _layer(_texture(rng, back, hz, sw), colour_b)
        img[hz:, x0:x1] = _layer(_texture(rng, ground, h - hz, sw), colour_g)
        horizons.append((x0, x1, hz, back, ground))
        x0 = x1
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for seg in horizons:
        _structure(rng, draw, h, *seg)
    _clutter(rng, draw, h, w, cam.horizon)
    return canvas


def _rand_rgb(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> tuple[int, int, int]:
    c = rng.integers(lo, hi, 3)
    return (int(c[0]), int(c[1]), int(c[2]))


def _structure(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, x0: int, x1: int, hz: int, back: str,
               ground: str) -> None:
    """Windows, shop signs, pillars, kerbs and lane marks of one segment."""
    if back in ("facade", "shopfront", "wall", "pillars"):
        x = x0 + int(rng.integers(0, h // 8))
        while x < x1:
            ww = int(rng.integers(h // 20 + 3, h // 6 + 4))
            top = int(rng.integers(0, max(1, hz // 3)))
            bottom = min(hz - 1, int(top + rng.integers(max(2, hz // 3), max(3, hz))))
            dark = int(rng.integers(30, 110))
            tint = (dark, dark + int(rng.integers(0, 25)), dark + int(rng.integers(0, 45)))
            if back == "pillars":
                draw.rectangle([x, 0, x + ww // 2, hz + h // 10], fill=_rand_rgb(rng, 110, 200))
            elif back != "wall" or rng.random() < 0.4:  # a plain wall has only the odd door or poster
                draw.rectangle([x, top, min(x1, x + ww), bottom], fill=tint)
            if back == "shopfront":
                draw.rectangle([x - 2, top - h // 30, min(x1, x + ww + 2), top], fill=_rand_rgb(rng))
            x += ww + int(rng.integers(h // 20 + 2, h // 4 + 4))
    if ground in ("tiles", "asphalt") and rng.random() < 0.6:
        kerb = hz + int(rng.integers(0, max(1, (h - hz) // 4)))
        draw.rectangle([x0, kerb, x1, kerb + max(2, h // 60)], fill=_rand_rgb(rng, 120, 200))
    if ground == "asphalt":
        y = hz + (h - hz) * 2 // 3
        for x in range(x0 + int(rng.integers(0, h // 4)), x1, h // 3):
            draw.rectangle([x, y, min(x1, x + h // 6), y + max(2, h // 80)], fill=(215, 215, 205))


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int, horizon: float) -> None:
    """Bins, bicycles, signs and shrubs standing on the ground."""
    hz = horizon * h
    for _ in range(int(rng.integers(w // h + 2, 3 * w // h + 5))):
        x = float(rng.uniform(0, w))
        y = float(rng.uniform(hz - h * 0.05, hz + (h - hz) * 0.5))
        s = float(rng.uniform(0.05, 0.16)) * h
        kind = int(rng.integers(4))
        c = _rand_rgb(rng)
        if kind == 0:  # bin / box
            draw.rectangle([x, y - s, x + s * 0.7, y], fill=c)
        elif kind == 1:  # bicycle
            r = s * 0.35
            for dx in (0.0, s * 1.1):
                draw.ellipse([x + dx - r, y - 2 * r, x + dx + r, y], outline=(30, 30, 30), width=max(1, h // 120))
            draw.line([(x, y - r), (x + s * 0.55, y - 2 * r), (x + s * 1.1, y - r)], fill=c, width=max(1, h // 100))
        elif kind == 2:  # sign on a post
            draw.rectangle([x, y - 2.2 * s, x + max(1.0, s * 0.06), y], fill=(90, 90, 90))
            draw.rectangle([x - s * 0.3, y - 2.4 * s, x + s * 0.4, y - 1.8 * s], fill=c)
        else:  # shrub
            g = (int(rng.integers(30, 70)), int(rng.integers(80, 140)), int(rng.integers(30, 70)))
            draw.ellipse([x - s * 0.6, y - s * 0.9, x + s * 0.6, y], fill=g)


def crop_background(rng: np.random.Generator, strip: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A random window of ``size`` = (w, h) pixels out of the camera's background ``strip``."""
    w, h = size
    x0 = int(rng.integers(0, strip.size[0] - w + 1))
    y0 = int(rng.integers(0, strip.size[1] - h + 1))
    return strip.crop((x0, y0, x0 + w, y0 + h))


# --------------------------------------------------------------------------------------------
# composing a person into the scene


def compose(bg: Image.Image, layer: Image.Image, cx: float, feet: float, size: float) -> Image.Image:
    """The RGBA person ``layer`` pasted over ``bg`` (modified in place), standing on a soft shadow."""
    rx, ry = 0.16 * size, 0.025 * size
    ImageDraw.Draw(bg, "RGBA").ellipse([cx - rx, feet - ry, cx + rx, feet + ry], fill=(0, 0, 0, 90))
    bg.paste(layer, (0, 0), layer)
    return bg


def occlude(rng: np.random.Generator, img: Image.Image, stranger: Identity, size: float) -> None:
    """Draw, in place, one occluder that cuts into the crop: a pole, another person or a car edge."""
    w, h = img.size
    kind = int(rng.integers(3))
    draw = ImageDraw.Draw(img)
    if kind == 0:
        pw = float(rng.uniform(0.07, 0.16)) * w
        x = float(rng.uniform(-0.1, 0.9)) * w
        c = (int(rng.integers(40, 180)),) * 3 if rng.random() < 0.7 else (40, 90, 60)
        draw.rectangle([x, 0, x + pw, h], fill=c)
        draw.rectangle([x + pw * 0.15, 0, x + pw * 0.35, h], fill=tuple(min(255, v + 40) for v in c))
    elif kind == 1:
        side = choose(rng, (-1.0, 1.0))
        cx = w / 2 + side * float(rng.uniform(0.5, 0.8)) * w
        s = size * float(rng.uniform(1.0, 1.25))
        feet = h * float(rng.uniform(0.95, 1.15))
        layer = draw_person((w, h), stranger, random_pose(rng, VIEWS[int(rng.integers(3))]), cx, feet, s)
        img.paste(layer, (0, 0), layer)
    else:
        side = int(rng.integers(2))
        top = float(rng.uniform(0.55, 0.78)) * h
        cw = float(rng.uniform(0.25, 0.55)) * w
        x0, x1 = (-0.2 * w, cw) if side == 0 else (w - cw, 1.2 * w)
        body = _rand_rgb(rng)
        draw.rounded_rectangle([x0, top, x1, h * 1.1], radius=int(0.08 * h), fill=body)
        draw.rectangle([x0, top + 0.04 * h, x1, top + 0.12 * h], fill=(35, 40, 50))
        wx = x1 - 0.1 * w if side == 0 else x0 + 0.1 * w
        draw.ellipse([wx - 0.12 * w, h * 0.92, wx + 0.12 * w, h * 1.16], fill=(20, 20, 20))


# --------------------------------------------------------------------------------------------
# the camera's image chain


def grain(rng: np.random.Generator, cam: Camera, size: tuple[int, int]) -> Image.Image:
    """A strip of the camera's sensor noise, 8 images tall, stored as 128 + noise; images crop it."""
    w, h = size
    k = int(round(cam.noise))
    return Image.fromarray((128 + rng.integers(-k, k + 1, (8 * h, w, 3))).astype(np.uint8), "RGB")


def develop(rng: np.random.Generator, img: Image.Image, cam: Camera, factor: int, noise: Image.Image) -> Image.Image:
    """Shrink a render super-sampled by ``factor`` and pass it through the camera's image chain.

    Order as in a camera: optics blur, saturation, exposure and white balance followed by the tone
    curve (one 8-bit lookup table per channel), then sensor noise (a random window of ``noise``,
    see :func:`grain`). The caller JPEG-compresses the result.
    """
    small = img.reduce(factor)
    w, h = small.size
    amount = min(1.0, cam.blur * float(rng.uniform(0.6, 1.4)))
    if amount > 0.05:
        # Blending with a half-resolution copy is a cheap, tunable low-pass (PIL's Gaussian blur costs
        # ten times more at this size).
        soft = small.reduce(2).resize(small.size, Image.BILINEAR)
        small = Image.blend(small, soft, amount)
    if cam.saturation != 1.0:
        small = ImageEnhance.Color(small).enhance(cam.saturation)
    gain = np.asarray(cam.cast) * cam.gain * float(rng.uniform(0.9, 1.1))
    level = np.arange(256, dtype=np.float64) / 255.0
    lut = np.clip(level[None, :] * gain[:, None], 0.0, 1.0) ** cam.gamma * 255.0
    small = small.point(lut.ravel().tolist())
    y0 = int(rng.integers(0, noise.size[1] - h + 1))
    return ImageChops.add(small, noise.crop((0, y0, w, y0 + h)), 1.0, -128)
