"""Pathfinder images: the generator behind studies/pathfinder/make_pathfinder.py (numpy only, no torch).

The two markers of an image are the ends of one curve (class 1) or of two different curves (class 0).

Generative process of one image (lengths in pixels at image size s; u = s / 64 px):

1. Parameters. A curve has ``dashes`` dashes of ``dash_length`` separated by gaps of ``dash_gap``: arc length
   L = dashes * dash_length + (dashes - 1) * dash_gap. Strokes are ``width`` = max(1, floor(s / 64 + 1/2)) px
   wide; markers are discs of radius ``marker_radius`` = 1.5 * width + 0.5. Different curves keep a clearance
   C = dash_gap + sqrt(2) + 0.6 between their pixels (centre to centre), while the pixels on the two sides of
   a gap inside a curve are at most dash_gap + sqrt(2) apart (pathfinder.json: ``max_gap_distance``): every
   gap is shorter than the space between two curves, so connectivity is well defined.
2. A curve's shape is a random walk of n = max(2, ceil(L / u)) straight steps of length L / n: the first step
   goes in a direction uniform in [0, 2 pi); the heading then turns by k_t at step t, where the turn rate
   k_1 is uniform in [-max_turn, max_turn] and changes every step by a uniform amount in
   [-max_turn / 3, max_turn / 3], reflected at +-max_turn (smooth curves: curvature at most max_turn / u).
3. A curve's *footprint* is every pixel its stroke would cover if it were solid (gaps filled in), plus a
   marker disc at each end that may be marked (both ends of A, the start of B). A curve is accepted if (a) its
   footprint lies inside the image, (b) no footprint pixel is closer than C to the footprint of a curve placed
   before, and (c) it does not come back near itself: its vertices (taken every ~C/2 px) more than 2 C apart
   along the curve are at least C + width apart. A shape that passes (c) gets a uniform sub-pixel offset and
   then a whole-pixel position drawn uniformly from *all* positions that pass (a) and (b) (found exactly, by
   FFT correlation); a shape with no such position is dropped and a new one drawn. After MAX_SHAPES shapes
   the image starts over, at most MAX_RESTARTS times (then a one-line error: the settings leave no room).
4. Curve A, placed as in 3. Its ends are a0 (start) and a1 (end); d = |a1 - a0|.
5. Curve B, placed as in 3 but only at positions that put its start b0 within half a pixel of the circle of
   radius d around a0: B's start is as far from a0 as A's other end.
6. ``distractors`` more curves, placed as in 3.
7. Every curve is drawn dashed, from a dash at one end to a dash at the other: a stroke pixel is the nearest
   pixel to a point of a dash (every 0.25 px along it, both ends included), widened by a round brush ``width``
   px across.
8. Markers: class 1 marks a0 and a1, class 0 marks a0 and b0 (a filled disc around the nearest pixel).

Steps 1-7 do not depend on the class: an image of either class is the same scene with the second marker at the
far end of A or at the start of B. Both classes have distractors + 2 curves of the same lengths and shape law,
the same marker distance (to half a pixel) and the same amount of ink. One cue besides connectivity is left,
as in LRA's Pathfinder: on short contours, the curve at a connected marker tends to point at the other marker
(a threshold on the cosine between that direction and the other marker is right for ~71 % of easy, ~59 % of
medium and ~52 % of hard images at 64 px, 1200 scenes each); hard contours have to be followed.

Presets (``--difficulty``; flags override single values), in px at s = 64, lengths scaled by s / 64:

    preset   dashes  dash_length  dash_gap  distractors  max_turn   L at 64 px
    easy        6        3.0         2.0         4          0.15      28 px
    medium      9        3.0         2.0         3          0.15      43 px
    hard       14        3.0         2.0         2          0.15      68 px (1.06 s)

LRA's contours have 6 / 9 / 14 paddles. Below 64 px the preset's distractor count is scaled by s / 64
(rounded, at least 1): the fixed sqrt(2) + 0.6 px of the clearance takes relatively more room there.
Every image depends only on (--seed, split, index): the same arguments give byte-identical files, with any
--workers, and train, val and the --grid picture draw from different random streams.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np

from sgconvnext_cli import CLIError

MIN_SIZE, MAX_SIZE = 32, 256
CLASSES = ('0_disconnected', '1_connected')
SPLITS = {'train': 0, 'val': 1, 'grid': 2}  # the split's code goes into every image's seed
SAMPLE_STEP = 0.25  # px between the centreline points that are rasterized
MAX_SHAPES = 256  # random walks tried per curve before the image starts over
DIRECT_LOOKUPS = 64  # fewer candidate positions than this are tested one by one, more by FFT
MAX_RESTARTS = 50  # image restarts before giving up: the settings leave no room for all the curves
# Per difficulty, at s = 64 px (lengths scale with s / 64): dashes per curve, dash length, gap, distractors,
# max turn (radians per step of s / 64 px).
PRESETS = {
    'easy': dict(dashes=6, dash_length=3.0, dash_gap=2.0, distractors=4, max_turn=0.15),
    'medium': dict(dashes=9, dash_length=3.0, dash_gap=2.0, distractors=3, max_turn=0.15),
    'hard': dict(dashes=14, dash_length=3.0, dash_gap=2.0, distractors=2, max_turn=0.15),
}
SCALED = ('dash_length', 'dash_gap')  # preset values in px at 64, scaled with the image size


@dataclass(frozen=True)
class Params:
    """Everything that decides an image, in pixels at ``img_size``."""
    img_size: int
    dashes: int
    dash_length: float
    dash_gap: float
    distractors: int
    max_turn: float
    width: int
    marker_radius: float
    clearance: float

    @property
    def length(self) -> float:
        return self.dashes * self.dash_length + (self.dashes - 1) * self.dash_gap

    @property
    def steps(self) -> int:
        return max(2, math.ceil(self.length / (self.img_size / 64)))


def resolve_params(img_size: int, difficulty: str = 'medium', **overrides) -> Params:
    """The preset of ``difficulty`` at ``img_size``, with every override that is not None put over it."""
    if not MIN_SIZE <= img_size <= MAX_SIZE:
        raise CLIError(f'--img-size must be between {MIN_SIZE} and {MAX_SIZE} px, got {img_size}')
    if difficulty not in PRESETS:
        raise CLIError(f'--difficulty must be one of {", ".join(PRESETS)}, got {difficulty!r}')
    values = dict(PRESETS[difficulty])
    for key in SCALED:
        values[key] *= img_size / 64
    # below 64 px the pixel grid makes the clearance relatively wider: fewer distractors fit
    values['distractors'] = max(1, math.floor(values['distractors'] * min(1, img_size / 64) + 0.5))
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key, low in (('dashes', 1), ('distractors', 0)):
        if isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < low:
            raise CLIError(f'--{key.replace("_", "-")} must be an integer >= {low}, got {values[key]!r}')
    for key, low in (('dash_length', 1.0), ('dash_gap', 1.0), ('max_turn', 0.0)):
        if not (math.isfinite(values[key]) and values[key] >= low):
            raise CLIError(f'--{key.replace("_", "-")} must be a number >= {low:g}, got {values[key]!r}')
    if values['max_turn'] > 1.0:
        raise CLIError(f'--max-turn must be at most 1 radian per step, got {values["max_turn"]!r}')
    width = max(1, math.floor(img_size / 64 + 0.5))
    p = Params(img_size=img_size, width=width, marker_radius=1.5 * width + 0.5,
               clearance=values['dash_gap'] + math.sqrt(2) + 0.6, **values)
    curves = p.distractors + 2
    if curves * p.length * p.clearance > (img_size + p.clearance) ** 2:  # their C/2-wide bands cannot fit
        raise CLIError(f'{curves} curves of {p.length:.0f} px, {p.clearance:.1f} px apart, cannot fit into '
                       f'{img_size} px images; use fewer --distractors or --dashes, or a smaller --dash-gap or '
                       f'--dash-length')
    return p


# ----------------------------------------------------------------------------------------------- geometry

def disc_offsets(radius: float) -> np.ndarray:
    """Integer (dy, dx) with dy^2 + dx^2 <= radius^2."""
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dy * dy + dx * dx <= radius * radius
    return np.stack([dy[keep], dx[keep]], 1)


def brush_offsets(width: int) -> np.ndarray:
    """Integer offsets of a round brush ``width`` px across (a single pixel for width 1)."""
    c = (width - 1) / 2
    dy, dx = np.mgrid[0:width, 0:width]
    keep = (dy - c) ** 2 + (dx - c) ** 2 <= (width / 2) ** 2
    return np.stack([dy[keep], dx[keep]], 1) - int(math.floor(c))


class Geometry:
    """What every curve of a ``Params`` shares: offsets, arc-length samples, the dash pattern."""

    def __init__(self, p: Params):
        self.p = p
        self.step = p.length / p.steps
        self.brush = brush_offsets(p.width)
        self.marker = disc_offsets(p.marker_radius)
        self.near = disc_offsets(math.nextafter(p.clearance, 0))  # offsets closer than C
        period, dash = p.dash_length + p.dash_gap, p.dash_length  # a dash at each end
        self.on_arc = np.concatenate([np.linspace(k * period, k * period + dash, math.ceil(dash / SAMPLE_STEP) + 1)
                                      for k in range(p.dashes)])
        # the footprint covers the strokes and the gaps between them
        self.solid_arc = np.concatenate([self.on_arc, np.linspace(0, p.length, math.ceil(p.length / 0.5) + 1)])
        self.stride = max(1, int(p.clearance / 2 / self.step))  # test (c) looks at vertices ~C/2 apart
        arc = np.arange(0, p.steps + 1, self.stride) * self.step
        self.far = np.abs(arc[:, None] - arc) > 2 * p.clearance

    def walks(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """(count, steps + 1, 2) random walks from the origin, as (y, x) vertices (step 2 of the docstring)."""
        p = self.p
        theta0 = rng.uniform(0, 2 * math.pi, (count, 1))
        free = rng.uniform(-p.max_turn, p.max_turn, (count, 1)) + np.concatenate(
            [np.zeros((count, 1)), np.cumsum(rng.uniform(-p.max_turn / 3, p.max_turn / 3, (count, p.steps - 2)), 1)],
            1)
        # a walk reflected at +-max_turn is the free walk folded by a triangle wave of period 4 max_turn
        period = 4 * p.max_turn
        turns = p.max_turn - np.abs(np.mod(free + p.max_turn, period) - 2 * p.max_turn) if p.max_turn else free * 0
        heading = theta0 + np.concatenate([np.zeros((count, 1)), np.cumsum(turns, 1)], 1)
        steps = self.step * np.stack([np.sin(heading), np.cos(heading)], -1)
        return np.concatenate([np.zeros((count, 1, 2)), np.cumsum(steps, 1)], 1)

    def along(self, vertices: np.ndarray, arc: np.ndarray) -> np.ndarray:
        """Points at arc lengths ``arc`` of polylines ``vertices`` (..., steps + 1, 2) -> (..., len(arc), 2)."""
        t = arc / self.step
        k = np.minimum(t.astype(np.int64), self.p.steps - 1)
        frac = (t - k)[:, None]
        return vertices[..., k, :] * (1 - frac) + vertices[..., k + 1, :] * frac

    def self_clear(self, walks: np.ndarray) -> np.ndarray:
        """(count,) bool: test (c) of step 3 for each walk of ``walks`` (count, steps + 1, 2), at every
        ``self.stride``-th vertex."""
        pts = walks[:, ::self.stride]
        d = pts[:, :, None] - pts[:, None]
        d2 = np.where(self.far, d[..., 0] ** 2 + d[..., 1] ** 2, np.inf)
        return d2.min((1, 2)) >= (self.p.clearance + self.p.width) ** 2

    def stroke(self, vertices: np.ndarray, arc: np.ndarray) -> np.ndarray:
        """Integer (y, x) pixels of the stroke along ``arc``: (..., N, 2), the nearest pixels widened by the brush."""
        centre = np.rint(self.along(vertices, arc)).astype(np.int64)
        return (centre[..., :, None, :] + self.brush).reshape(*centre.shape[:-2], -1, 2)

    def footprint(self, vertices: np.ndarray, marked_ends=()) -> np.ndarray:
        """Step 3's footprint: the solid stroke and a marker disc around each end in ``marked_ends`` (0, -1)."""
        parts = [self.stroke(vertices, self.solid_arc)]
        for end in marked_ends:
            parts.append(np.rint(vertices[..., end, None, :]).astype(np.int64) + self.marker)
        return np.concatenate(parts, -2)


class Canvas:
    """The curves accepted so far, as a mask of the pixels closer than C to any of their footprints."""

    def __init__(self, g: Geometry):
        self.g, self.size = g, g.p.img_size
        self.blocked = np.zeros((self.size, self.size), bool)
        self._spectrum = None  # rfft2 of blocked, computed when first needed after a change

    def add(self, fp: np.ndarray) -> None:
        """Block every pixel closer than C to a pixel of ``fp``."""
        size = self.size
        pts = np.unique(fp[:, 0] * size + fp[:, 1])
        near = (np.stack([pts // size, pts % size], 1)[:, None] + self.g.near).reshape(-1, 2)
        near = near[((near >= 0) & (near < size)).all(1)]
        self.blocked[near[:, 0], near[:, 1]] = True
        self._spectrum = None

    @property
    def spectrum(self):
        if self._spectrum is None:
            self._spectrum = np.fft.rfft2(self.blocked)
        return self._spectrum

    def free_positions(self, rel: np.ndarray, allowed=None) -> np.ndarray:
        """Flat indices t = ty * S + tx of the shifts that put every pixel of ``rel + (ty, tx)`` inside the
        image and off blocked pixels, among those where ``allowed`` (S, S) is true (default: all).

        ``rel`` (N, 2) are pixels with min 0. A few candidates are looked up one by one; for many, the count of
        blocked pixels under every shift is a correlation, done by FFT (no wrap-around: shifts that would wrap
        put pixels outside the image anyway).
        """
        size = self.size
        extent = rel.max(0) + 1
        inside = np.zeros((size, size), bool)
        inside[:size - extent[0] + 1, :size - extent[1] + 1] = True
        if allowed is not None:
            inside &= allowed
        candidates = np.flatnonzero(inside)
        if not len(candidates) or not self.blocked.any():
            return candidates
        if len(candidates) <= DIRECT_LOOKUPS:
            ty, tx = candidates // size, candidates % size
            hit = self.blocked[rel[:, 0] + ty[:, None], rel[:, 1] + tx[:, None]].any(1)
            return candidates[~hit]
        mask = np.zeros((size, size))
        mask[rel[:, 0], rel[:, 1]] = 1
        hits = np.fft.irfft2(self.spectrum * np.conj(np.fft.rfft2(mask)), s=(size, size))
        return candidates[hits.ravel()[candidates] < 0.5]


def place_curve(rng: np.random.Generator, g: Geometry, canvas: Canvas, marked_ends=(), around=None):
    """A curve that passes step 3's tests, added to ``canvas``: its vertices, or None after MAX_SHAPES shapes.

    Each self-clear shape goes to a uniformly random sub-pixel offset, then to a whole-pixel position drawn
    uniformly from all those where its footprint is inside the image and clear of the canvas; a shape with no
    such position is dropped. With ``around=(centre, radius)`` only the positions that put the curve's start
    within half a pixel of that circle count (curve B).
    """
    size, tried, batch = g.p.img_size, 0, 2
    while tried < MAX_SHAPES:
        walks = g.walks(rng, batch)
        tried, batch = tried + batch, min(2 * batch, 16)  # most curves fit at once; crowded ones need many tries
        for walk in walks[g.self_clear(walks)]:
            walk = walk + rng.uniform(0, 1, 2)
            fp = g.footprint(walk, marked_ends)
            low = fp.min(0)
            if (fp.max(0) - low >= size).any():
                continue
            allowed = None
            if around is not None:  # the start after a shift (ty, tx) is walk[0] - low + (ty, tx)
                (cy, cx), radius = around
                dy = walk[0, 0] - low[0] - cy + np.arange(size)
                dx = walk[0, 1] - low[1] - cx + np.arange(size)
                allowed = np.abs(np.hypot(dy[:, None], dx[None, :]) - radius) <= 0.5
            choices = canvas.free_positions(fp - low, allowed)
            if len(choices):
                t = choices[rng.integers(len(choices))]
                shift = np.array([t // size, t % size]) - low
                canvas.add(fp + shift)
                return walk + shift
    return None


def scene(rng: np.random.Generator, g: Geometry):
    """Vertices of (A, B, [distractors]) as in steps 4-6; CLIError when MAX_RESTARTS attempts all fail."""
    for _ in range(MAX_RESTARTS):
        canvas = Canvas(g)
        a = place_curve(rng, g, canvas, marked_ends=(0, -1))
        if a is None:
            continue
        b = place_curve(rng, g, canvas, marked_ends=(0,), around=(a[0], float(np.hypot(*(a[-1] - a[0])))))
        if b is None:
            continue
        others = []
        while len(others) < g.p.distractors:
            curve = place_curve(rng, g, canvas)
            if curve is None:
                break
            others.append(curve)
        else:
            return a, b, others
    raise CLIError(f'cannot fit {g.p.distractors + 2} curves of {g.p.length:.0f} px at {g.p.clearance:.1f} px '
                   f'clearance into {g.p.img_size} px images; use fewer --distractors or --dashes, or a smaller '
                   f'--dash-gap or --dash-length')


def render(g: Geometry, label: int, rng: np.random.Generator) -> np.ndarray:
    """One (s, s) uint8 image of class ``label`` (steps 7 and 8)."""
    a, b, others = scene(rng, g)
    img = np.zeros((g.p.img_size,) * 2, np.uint8)
    for curve in (a, b, *others):
        pix = g.stroke(curve, g.on_arc)
        img[pix[:, 0], pix[:, 1]] = 255
    for end in (a[0], a[-1] if label == 1 else b[0]):
        pix = np.rint(end).astype(np.int64) + g.marker
        img[pix[:, 0], pix[:, 1]] = 255
    return img


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


@functools.lru_cache(maxsize=8)
def geometry(p: Params) -> Geometry:
    return Geometry(p)


def make_image(p: Params, seed: int, split: str, index: int) -> np.ndarray:
    """Image ``index`` of ``split``; its class is ``index % 2``."""
    return render(geometry(p), index % 2, image_rng(seed, split, index))
