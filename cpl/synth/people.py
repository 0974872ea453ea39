"""Synthetic pedestrians: identity attributes and drawing one person seen from front, back or side.

An :class:`Identity` fixes what stays constant across cameras (body shape, clothes, accessories); a
:class:`Pose` holds what changes per image (view, limb positions, tilt). :func:`draw_person` renders
them as an RGBA layer with PIL, in pixel coordinates of a (super-sampled) canvas.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
T = TypeVar("T")

# Clothing colours weighted roughly like a street crowd: mostly dark and neutral, a few bright ones,
# so that colour alone cannot tell most people apart.
_CLOTHES = [
    ((25, 25, 28), 10), ((60, 60, 64), 6), ((120, 120, 124), 5), ((225, 225, 220), 8), ((32, 40, 80), 6),
    ((70, 95, 140), 5), ((200, 185, 150), 3), ((150, 130, 90), 2), ((95, 65, 45), 2), ((180, 35, 40), 2),
    ((110, 30, 45), 1), ((225, 150, 170), 2), ((100, 60, 130), 1), ((40, 110, 60), 1), ((95, 100, 50), 1),
    ((225, 200, 60), 1), ((230, 120, 40), 1), ((140, 185, 225), 2), ((30, 120, 125), 1),
]
_LOWER = [
    ((25, 25, 28), 10), ((45, 60, 100), 8), ((80, 110, 155), 5), ((60, 60, 64), 4), ((120, 120, 124), 2),
    ((190, 175, 140), 3), ((95, 65, 45), 2), ((225, 225, 220), 1), ((110, 30, 45), 1), ((95, 100, 50), 1),
]
_SKIN = [(238, 205, 180), (225, 180, 150), (200, 150, 115), (160, 110, 80), (115, 75, 55), (85, 55, 40)]
_HAIR = [((20, 18, 18), 10), ((55, 35, 25), 5), ((100, 70, 45), 3), ((190, 160, 100), 2), ((150, 150, 150), 1),
         ((140, 70, 35), 1)]
_SHOES = [((20, 20, 20), 8), ((235, 235, 235), 5), ((90, 60, 40), 3), ((110, 110, 115), 2), ((180, 40, 40), 1),
          ((40, 70, 140), 1)]
_BAGS = [((25, 25, 28), 6), ((60, 60, 64), 2), ((95, 65, 45), 3), ((32, 40, 80), 2), ((180, 35, 40), 1),
         ((40, 110, 60), 1), ((200, 185, 150), 1), ((230, 120, 40), 1)]

PATTERNS = ("solid", "stripes", "checks", "logo", "two_tone")
VIEWS = ("front", "back", "side")
# Attributes a near-duplicate may differ in from the identity it was copied from.
_MIN_CONTRAST = 120  # L1 distance (0..765) from which two clothing colours count as different
_RIM = 0.72  # brightness of the silhouette edge of limbs and torso relative to their core
_MUTABLE = ("top", "top2", "pattern", "lower", "lower_kind", "shoes", "backpack", "bag", "hat", "carry", "hair")


@dataclass(frozen=True)
class Identity:
    """Everything that makes one person recognisable; all lengths are fractions of body height."""

    height: float  # body height relative to the camera's nominal person height
    build: float  # width multiplier of shoulders, hips and limbs
    leg: float  # hip height / body height
    head: float  # head radius / body height
    skin: RGB
    hair: RGB
    hair_style: str  # short | long | bun | bald
    top: RGB
    top2: RGB  # second colour of the pattern (stripes, checks, logo, lower block of two_tone)
    pattern: str  # one of PATTERNS
    period: float  # stripe / check period
    sleeves: str  # long | short
    lower_kind: str  # trousers | shorts | skirt
    lower: RGB
    shoes: RGB
    backpack: RGB | None
    bag: RGB | None  # shoulder bag, hanging at the hip on side bag_side
    bag_side: int  # -1 left, +1 right (as seen from the front)
    hat: RGB | None
    carry: RGB | None  # object carried in one hand
    logo_shape: str  # circle | square | triangle | bar


@dataclass(frozen=True)
class Pose:
    """Per-image state of a person: view, limb angles (radians) and in-plane tilt (degrees)."""

    view: str  # front | back | side
    facing: int  # side view: +1 walks to the right of the image, -1 to the left
    arm_swing: float
    stride: float
    arm_spread: float
    tilt: float


def choose(rng: np.random.Generator, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
    """One of ``options``, with probability proportional to ``weights`` (uniform when None).

    Much cheaper than ``Generator.choice`` for the handful of options drawn here per image.
    """
    if weights is None:
        return options[int(rng.integers(len(options)))]
    cum = list(itertools.accumulate(weights))
    return options[min(len(options) - 1, bisect.bisect_right(cum, rng.random() * cum[-1]))]


def _pick(rng: np.random.Generator, table: list[tuple[RGB, int]]) -> RGB:
    return choose(rng, table, [w for _, w in table])[0]


def _jitter(rng: np.random.Generator, c: RGB, amount: int = 12) -> RGB:
    """Vary a palette colour a little so two people rarely share exactly the same shade."""
    v = np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(v[0]), int(v[1]), int(v[2]))


def _clothes(rng: np.random.Generator) -> RGB:
    return _jitter(rng, _pick(rng, _CLOTHES))


def _maybe(rng: np.random.Generator, p: float, table: list[tuple[RGB, int]]) -> RGB | None:
    return _jitter(rng, _pick(rng, table)) if rng.random() < p else None


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw a person from the attribute distributions."""
    top = _clothes(rng)
    top2 = _clothes(rng)
    while not distinct(top, top2):  # a pattern must be visible
        top2 = _clothes(rng)
    lower_kind = choose(rng, ("trousers", "shorts", "skirt"), (0.7, 0.15, 0.15))
    return Identity(
        height=float(rng.uniform(0.9, 1.06)),
        build=float(rng.uniform(0.8, 1.25)),
        leg=float(rng.uniform(0.44, 0.53)),
        head=float(rng.uniform(0.056, 0.072)),
        skin=_jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 8),
        hair=_jitter(rng, _pick(rng, _HAIR), 8),
        hair_style=choose(rng, ("short", "long", "bun", "bald"), (0.5, 0.3, 0.12, 0.08)),
        top=top,
        top2=top2,
        pattern=choose(rng, PATTERNS, (0.4, 0.2, 0.12, 0.16, 0.12)),
        period=float(rng.uniform(0.035, 0.07)),
        sleeves=choose(rng, ("long", "short"), (0.55, 0.45)),
        lower_kind=lower_kind,
        lower=_jitter(rng, _pick(rng, _LOWER)),
        shoes=_jitter(rng, _pick(rng, _SHOES), 8),
        backpack=_maybe(rng, 0.3, _BAGS),
        bag=_maybe(rng, 0.2, _BAGS),
        bag_side=choose(rng, (-1, 1)),
        hat=_maybe(rng, 0.12, _CLOTHES),
        carry=_maybe(rng, 0.15, _BAGS + _CLOTHES),
        logo_shape=choose(rng, ("circle", "square", "triangle", "bar")),
    )


def distinct(a: object, b: object) -> bool:
    """Whether two attribute values look different: colours must be at least ``_MIN_CONTRAST`` apart."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return sum(abs(x - y) for x, y in zip(a, b)) >= _MIN_CONTRAST
    return a != b


def _shows(ident: Identity, name: str) -> bool:
    """Whether changing attribute ``name`` of ``ident`` changes how the person looks."""
    if name == "top2":
        return ident.pattern != "solid"
    if name == "hair":
        return ident.hair_style != "bald"
    return True


def near_duplicate(rng: np.random.Generator, parent: Identity) -> Identity:
    """A different person who shares every attribute of ``parent`` but one visible one (a hard negative)."""
    names = [n for n in _MUTABLE if _shows(parent, n)]
    for _ in range(50):  # retry until the changed attribute really looks different
        fresh = random_identity(rng)
        name = choose(rng, names)
        if distinct(getattr(fresh, name), getattr(parent, name)):
            return dataclasses.replace(parent, **{name: getattr(fresh, name)})
    return fresh


def random_pose(rng: np.random.Generator, view: str) -> Pose:
    """Walking pose: arm swing and stride are wide in the side view, small seen from front or back."""
    side = view == "side"
    phase = rng.uniform(-1.0, 1.0)
    return Pose(
        view=view,
        facing=choose(rng, (-1, 1)),
        arm_swing=float(phase * (0.55 if side else 0.12)),
        stride=float(phase * (1.0 if side else 0.3) + rng.normal(0, 0.08)),
        arm_spread=float(rng.uniform(0.02, 0.2)),
        tilt=float(rng.normal(0.0, 2.5)),
    )


def _shade(c: RGB, f: float) -> RGB:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


class _Pen:
    """Maps body coordinates (u right, v up, both in body heights; origin between the feet) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, feet: float, size: float, flip: int, tilt: float):
        self.draw, self.cx, self.feet, self.size, self.flip = draw, cx, feet, size, flip
        # Tilting the coordinates instead of rotating the finished layer costs nothing; only the
        # small axis-aligned ellipses (head, hands, feet) stay upright, which is invisible at +-5 deg.
        self.cos, self.sin = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))

    def xy(self, u: float, v: float) -> tuple[float, float]:
        """Pixel coordinates (x, y) of body point (u, v), mirrored and tilted with the figure."""
        x, y = self.flip * u * self.size, v * self.size
        return (self.cx + x * self.cos - y * self.sin, self.feet - x * self.sin - y * self.cos)

    def poly(self, pts: list[tuple[float, float]], fill: RGB) -> None:
        """Fill the polygon through body points ``pts``."""
        self.draw.polygon([self.xy(u, v) for u, v in pts], fill=fill)

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: RGB) -> None:
        """Fill an axis-aligned ellipse centred on body point (u, v) with radii ``ru``, ``rv`` (body heights)."""
        x, y = self.xy(u, v)
        rx, ry = ru * self.size, rv * self.size
        self.draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)

    def chain(self, pts: list[tuple[float, float]], w: float, fill: RGB, rim: bool = False) -> None:
        """A limb: a polyline of width ``w`` with round joints. Its ends are always covered by something
        else (torso, shoe, hand), so no caps are drawn.

        With ``rim`` the edges are darker than the core, the cheapest cue that a limb is round.
        """
        xy = [self.xy(u, v) for u, v in pts]
        layers = [(_shade(fill, _RIM), w), (fill, 0.5 * w)] if rim else [(fill, w)]
        for colour, width in layers:
            self.draw.line(xy, fill=colour, width=max(1, round(width * self.size)))
            r = width * self.size / 2
            for x, y in xy[1:-1]:  # round joints (PIL's joint="curve" is computed in Python, slowly)
                self.draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _pattern(ident: Identity, box: tuple[int, int, int, int], cx: float, top_y: float, bottom_y: float,
             size: float) -> np.ndarray:
    """[y1-y0, x1-x0, 3] uint8 torso texture over canvas pixels ``box`` = (x0, y0, x1, y1).

    Coordinates are relative to the body, so stripes and checks move with the person.
    """
    x0, y0, x1, y1 = box
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] - top_y) / size
    xs = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / size
    shape = (y1 - y0, x1 - x0)
    p = ident.period
    if ident.pattern == "stripes":
        sel = np.broadcast_to(np.floor(ys / p) % 2 == 1, shape)
    elif ident.pattern == "checks":
        sel = ((np.floor(ys / p) + np.floor(xs / p)) % 2) == 1
    else:  # two_tone: a colour block from 45% of the torso down
        sel = np.broadcast_to(ys > 0.45 * (bottom_y - top_y) / size, shape)
    return np.where(sel[..., None], np.array(ident.top2, np.uint8), np.array(ident.top, np.uint8))


def draw_person(canvas: tuple[int, int], ident: Identity, pose: Pose, cx: float, feet: float,
                size: float) -> Image.Image:
    """RGBA layer of ``canvas`` = (width, height) pixels with the person standing with feet at (cx, feet).

    ``size`` is the body height in pixels (already multiplied by ``ident.height``). Alpha is 255 on the
    person and 0 elsewhere; the body is tilted by ``pose.tilt`` degrees about the feet.
    """
    layer = Image.new("RGBA", canvas, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    view, side = pose.view, pose.view == "side"
    flip = pose.facing if side else 1
    pen = _Pen(draw, cx, feet, size, flip, pose.tilt)
    b = ident.build
    r_head = ident.head
    v_head = 1.0 - r_head
    v_sh = 1.0 - 2.05 * r_head - 0.02
    v_hip = ident.leg
    sw = (0.09 if side else 0.15) * b  # shoulder half-width
    hw = (0.08 if side else 0.11) * b  # hip half-width
    limb_w = 0.068 * b
    arm_w = 0.055 * b
    ankle = 0.035

    # Feet and knees; in the side view one leg steps forward (+u) and the other back.
    if side:
        feet_u = (0.13 * pose.stride, -0.13 * pose.stride)
        hips_u = (0.012, -0.012)
    else:
        spread = 0.035 + 0.02 * abs(pose.stride)
        feet_u = (-hw / 2 - spread, hw / 2 + spread)
        hips_u = (-hw / 2, hw / 2)
    knee_v = v_hip * 0.5
    skin_legs = ident.lower_kind in ("shorts", "skirt")

    def leg(i: int, dark: float) -> None:
        hu, fu = hips_u[i], feet_u[i]
        ku = (hu + fu) / 2 + (0.015 if side else 0.0)
        leg_c = _shade(ident.skin if skin_legs else ident.lower, dark)
        pen.chain([(hu, v_hip), (ku, knee_v), (fu, ankle)], limb_w, leg_c, rim=True)
        if ident.lower_kind == "shorts":
            pen.chain([(hu, v_hip + 0.02), ((hu + ku) / 2 + 0.005, (v_hip + knee_v) / 2 - 0.03)], limb_w * 1.15,
                      _shade(ident.lower, dark))
        pen.ellipse(fu + (0.03 if side else 0.0), ankle - 0.012, 0.032 if side else 0.026, 0.018,
                    _shade(ident.shoes, dark))

    leg(0, 0.8 if side else 1.0)  # in the side view leg 0 is the far one, in shadow
    leg(1, 1.0)
    if ident.lower_kind != "shorts":
        pen.poly([(-hw, v_hip + 0.02), (hw, v_hip + 0.02), (hw, v_hip - 0.06), (-hw, v_hip - 0.06)],
                 ident.skin if skin_legs else ident.lower)
    if ident.lower_kind == "skirt":
        flare = hw + 0.035 + (0.02 if side else 0.03) * abs(pose.stride)
        pen.poly([(-hw, v_hip + 0.02), (hw, v_hip + 0.02), (flare, knee_v + 0.03), (-flare, knee_v + 0.03)],
                 ident.lower)

    shoulder_l, shoulder_r = (-sw + arm_w / 2, v_sh - 0.012), (sw - arm_w / 2, v_sh - 0.012)
    arm_len = 0.36

    def arm(shoulder: tuple[float, float], angle: float, shade: float) -> tuple[float, float]:
        su, sv = shoulder
        eu, ev = su + math.sin(angle) * arm_len / 2, sv - math.cos(angle) * arm_len / 2
        bend = angle * 1.35 if side else angle
        hu, hv = eu + math.sin(bend) * arm_len / 2, ev - math.cos(bend) * arm_len / 2
        sleeve = _shade(ident.top, shade)
        if ident.sleeves == "long":
            pen.chain([(su, sv), (eu, ev), (hu, hv)], arm_w, sleeve, rim=True)
        else:
            pen.chain([(su, sv), (eu, ev), (hu, hv)], arm_w * 0.8, _shade(ident.skin, shade), rim=True)
            pen.chain([(su, sv), ((su + eu) / 2, (sv + ev) / 2)], arm_w * 1.05, sleeve, rim=True)
        pen.ellipse(hu, hv - 0.01, 0.022, 0.024, _shade(ident.skin, shade))
        return hu, hv

    pack_w, pack_top, pack_bot = 0.09 * b, v_sh - 0.015, v_hip + 0.07
    if side and ident.backpack is not None:
        pen.poly([(-sw - 0.07, pack_top), (-sw + 0.01, pack_top + 0.01), (-sw + 0.01, pack_bot),
                  (-sw - 0.065, pack_bot + 0.01)], ident.backpack)
    if side:
        arm((0.0, v_sh - 0.012), -pose.arm_swing, 0.75)  # far arm, in shadow
    if view == "front" and ident.hair_style == "long":
        pen.poly([(-r_head * 1.05, v_head), (r_head * 1.05, v_head), (r_head * 1.2, v_sh - 0.07),
                  (-r_head * 1.2, v_sh - 0.07)], ident.hair)

    # The neck goes behind the torso and, seen from the back, behind long hair.
    pen.chain([(0.0, v_sh - 0.01), (0.0, v_head - r_head * 0.6)], 0.035 * b, _shade(ident.skin, 0.9))
    torso = [(-sw, v_sh), (sw, v_sh), (hw * 1.05, v_hip + 0.04), (hw * 1.05, v_hip - 0.025),
             (-hw * 1.05, v_hip - 0.025), (-hw * 1.05, v_hip + 0.04)]
    # Torso: a darker silhouette, then the clothing (plain or patterned) over a narrower core.
    pen.poly(torso, _shade(ident.top, _RIM))
    core = [(u * 0.82, v) for u, v in torso]
    if ident.pattern in ("stripes", "checks", "two_tone"):
        pts = [pen.xy(u, v) for u, v in core]
        x0, y0 = (max(0, int(min(c)) - 1) for c in zip(*pts))
        x1, y1 = (min(lim, int(max(c)) + 2) for c, lim in zip(zip(*pts), canvas))
        if x1 > x0 and y1 > y0:
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
            tex = _pattern(ident, (x0, y0, x1, y1), cx, pen.xy(0, v_sh)[1], pen.xy(0, v_hip - 0.025)[1], size)
            layer.paste(Image.fromarray(tex, "RGB"), (x0, y0), mask)
    else:
        pen.poly(core, ident.top)
    pen.ellipse(-sw + arm_w / 2, v_sh - 0.012, arm_w * 0.6, arm_w * 0.45, ident.top)
    pen.ellipse(sw - arm_w / 2, v_sh - 0.012, arm_w * 0.6, arm_w * 0.45, ident.top)

    if view == "back" and ident.backpack is not None:
        pen.poly([(-pack_w, pack_top), (pack_w, pack_top), (pack_w * 1.05, pack_bot), (-pack_w * 1.05, pack_bot)],
                 ident.backpack)
        pen.poly([(-pack_w * 0.8, pack_bot - 0.06), (pack_w * 0.8, pack_bot - 0.06), (pack_w * 0.8, pack_bot - 0.012),
                  (-pack_w * 0.8, pack_bot - 0.012)], _shade(ident.backpack, 0.7))
    if view == "front" and ident.backpack is not None:
        for s in (-1, 1):
            pen.chain([(s * sw * 0.6, v_sh), (s * sw * 0.7, v_sh - 0.14)], 0.018, _shade(ident.backpack, 0.8))
    if view == "front" and ident.pattern == "logo":
        lu, lv, r = 0.0, v_sh - 0.09, 0.032 * b
        c = ident.top2
        if ident.logo_shape == "circle":
            pen.ellipse(lu, lv, r, r, c)
        elif ident.logo_shape == "square":
            pen.poly([(lu - r, lv + r), (lu + r, lv + r), (lu + r, lv - r), (lu - r, lv - r)], c)
        elif ident.logo_shape == "triangle":
            pen.poly([(lu - r * 1.2, lv - r), (lu + r * 1.2, lv - r), (lu, lv + r * 1.2)], c)
        else:
            pen.poly([(-sw * 0.8, lv + r * 0.5), (sw * 0.8, lv + r * 0.5), (sw * 0.8, lv - r * 0.5),
                      (-sw * 0.8, lv - r * 0.5)], c)
    if view == "back" and ident.hair_style == "long":
        pen.poly([(-r_head, v_head), (r_head, v_head), (r_head * 1.15, v_sh - 0.09), (-r_head * 1.15, v_sh - 0.09)],
                 ident.hair)

    if ident.bag is not None:
        s = ident.bag_side * (-1 if view == "back" else 1)
        if side:
            s = 1 if ident.bag_side * pose.facing > 0 else -1
        bag_u, bag_v = s * (sw + 0.01) if not side else s * 0.02, v_hip + 0.02
        pen.chain([(-s * sw * 0.7, v_sh), (bag_u, bag_v + 0.04)], 0.012, _shade(ident.bag, 0.75))
        pen.poly([(bag_u - 0.045, bag_v + 0.045), (bag_u + 0.045, bag_v + 0.045), (bag_u + 0.05, bag_v - 0.045),
                  (bag_u - 0.05, bag_v - 0.045)], ident.bag)

    if side:
        hands = [arm((0.0, v_sh - 0.012), pose.arm_swing, 1.0)]
    else:
        hands = [arm(shoulder_l, -pose.arm_spread, 0.92), arm(shoulder_r, pose.arm_spread, 0.92)]
    if ident.carry is not None:
        hu, hv = hands[-1]
        pen.poly([(hu - 0.04, hv - 0.01), (hu + 0.04, hv - 0.01), (hu + 0.045, hv - 0.12), (hu - 0.045, hv - 0.12)],
                 ident.carry)

    # Head: from the front the face shows, from the back only hair, from the side half of each.
    rw = r_head * 0.82
    hair = ident.hair if ident.hair_style != "bald" else _shade(ident.skin, 0.95)
    if view == "back":
        pen.ellipse(0.0, v_head, rw, r_head, hair if ident.hair_style != "bald" else ident.skin)
    else:
        pen.ellipse(0.0, v_head + 0.006, rw * 1.05, r_head * 1.02, hair)
        if side:
            pen.ellipse(r_head * 0.25, v_head - 0.01, rw * 0.8, r_head * 0.85, ident.skin)
        else:
            pen.ellipse(0.0, v_head - 0.012, rw * 0.88, r_head * 0.84, ident.skin)
    if ident.hair_style == "bun":
        pen.ellipse(-r_head * 0.8 if side else 0.0, v_head + r_head * 0.95, r_head * 0.45, r_head * 0.4, ident.hair)
    if ident.hat is not None:
        pen.ellipse(0.0, v_head + r_head * 0.45, rw * 1.12, r_head * 0.62, ident.hat)
        if view != "back":
            pen.poly([(-rw * (0.2 if side else 1.1), v_head + r_head * 0.25),
                      (rw * (1.7 if side else 1.1), v_head + r_head * 0.25),
                      (rw * (1.7 if side else 1.1), v_head + r_head * 0.1),
                      (-rw * (0.2 if side else 1.1), v_head + r_head * 0.1)], _shade(ident.hat, 0.8))
    return layer
