"""The synthetic faces: a procedural face renderer with expression labels and landmarks.

data.SyntheticFaces is the dataset; this module only draws one face (draw_face) as a pure function
of a numpy generator, so that item i of a set is the same in every process. Read it only to change
how faces look.
"""
import math
from functools import lru_cache

from types import SimpleNamespace

import numpy as np
import torch

# ----------------------------------------------------------------------------- synthetic faces
#
# A face is drawn in its own frame (u to the right, v down, face centre at 0, face half-width about
# 1) out of soft-edged ellipses and of bands between two parabolas. A random rotation, scale and
# shift maps every pixel into that frame once per image, so the pose costs nothing per shape, and
# each shape only touches the pixels of its bounding box. An expression is a set of facial action
# units (brow raiser, brow lowerer, lip corner puller, ...) at a random intensity plus noise:
# classes overlap, differ in small local cues, and identity (brow height, mouth shape, eye size)
# varies as much as those cues, as in real faces.

# left / right as seen in the image; eye_idx = the outer eye corners (4, 7), as 36 / 45 in the
# 68-point scheme
SYNTHETIC_LANDMARKS = ["brow_left_outer", "brow_left_inner", "brow_right_inner", "brow_right_outer",
                       "eye_left_outer", "eye_left_inner", "eye_right_inner", "eye_right_outer",
                       "eye_left_centre", "eye_right_centre", "nose_tip", "mouth_left",
                       "mouth_right", "upper_lip", "lower_lip"]
ACTION_UNITS = ["brow_raise", "brow_inner", "brow_lower", "eye_open", "smile", "mouth_open",
                "lip_press", "nose_wrinkle", "stretch"]
EXPRESSIONS = np.array([  # one row per class, in RAF-DB's order; columns as ACTION_UNITS
    # Surprise: brows up, eyes wide, jaw drop (round mouth)
    [1.0, 0.2, 0.0, 0.9, 0.0, 0.9, 0.0, 0.0, -0.4],
    # Fear: brows up and knit, eyes wide, lips stretched
    [0.5, 0.9, 0.3, 1.0, -0.2, 0.35, 0.0, 0.0, 0.9],
    # Disgust: nose wrinkle, upper lip raised, brows down
    [0.0, 0.0, 0.5, -0.4, -0.4, 0.1, 0.2, 1.0, 0.1],
    # Happiness: lip corners up, cheeks push eyes narrow
    [0.1, 0.0, 0.0, -0.45, 1.0, 0.35, 0.0, 0.1, 0.3],
    [0.0, 1.0, 0.1, -0.3, -0.8, 0.0, 0.3, 0.0, 0.0],  # Sadness: inner brows up, lip corners down
    # Anger: brows down and knit, glare, lips pressed
    [0.0, 0.0, 1.0, 0.3, -0.2, 0.0, 0.9, 0.2, 0.0], [0.0] * 9,  # Neutral
], dtype=np.float32)
AU_NOISE = 0.15  # spread of every action unit around its class prototype
EXTENT = 1.6  # face units from the image centre to its edge, at scale 1
# aligned look: eye centres at 32 % / 68 % of the width, 35 % of the height
ALIGNED_EYE_DX, ALIGNED_EYE_Y = 0.36, -0.3
LOOKS = ("aligned", "scene", "wild")
SKIN = np.array([[0.98, 0.84, 0.72], [0.36, 0.22, 0.15]], dtype=np.float32)  # lightest, darkest
HAIR = np.array([[0.08, 0.06, 0.05], [0.32, 0.2, 0.11], [0.8, 0.64, 0.36], [0.55, 0.22, 0.08],
                 [0.68, 0.68, 0.66]], dtype=np.float32)
IRIS = np.array([[0.3, 0.18, 0.08], [0.25, 0.4, 0.6], [0.3, 0.45, 0.25], [0.1, 0.07, 0.05]],
                dtype=np.float32)


@lru_cache(maxsize=4)
def _pixel_grid(n):
    """Pixel centres in [-1, 1] image coordinates, and a fixed bank of noise that each image crops
    at random."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(c, c)
    return x, y, np.random.default_rng(0).standard_normal((3, 2 * n, 2 * n), dtype=np.float32)


class _Canvas:
    """A 3 x n x n float image and, for every pixel, its position (U, V) in the face frame."""

    def __init__(self, n, angle, scale, shift):
        x, y, _ = _pixel_grid(n)
        self.n, self.k = n, EXTENT / scale  # face units per image unit
        self.c, self.s, (self.sx, self.sy) = math.cos(angle), math.sin(angle), shift
        # rotate by -angle into the face frame
        self.U = self.k * (self.c * (x - self.sx) + self.s * (y - self.sy))
        self.V = self.k * (self.c * (y - self.sy) - self.s * (x - self.sx))
        self.px = 2 * self.k / n  # face units per pixel: the width of an anti-aliased edge
        # channels first: painting broadcasts 7x faster
        self.img = np.empty((3, n, n), dtype=np.float32)

    def to_pixels(self, u, v):
        """Face frame -> continuous pixel coordinates (the inverse of the map above)."""
        x = (self.c * u - self.s * v) / self.k + self.sx
        y = (self.s * u + self.c * v) / self.k + self.sy
        return (x + 1) / 2 * self.n, (y + 1) / 2 * self.n

    def window(self, u0, u1, v0, v1):
        """The pixels (a pair of slices) covering the face-frame box [u0, u1] x [v0, v1], rotated.
        """
        x, y = self.to_pixels((u0 + u1) / 2, (v0 + v1) / 2)
        r = self.n / (2 * self.k)  # pixels per face unit
        hx = (abs(self.c) * (u1 - u0) + abs(self.s) * (v1 - v0)) / 2 * r + 1
        hy = (abs(self.s) * (u1 - u0) + abs(self.c) * (v1 - v0)) / 2 * r + 1
        clip = lambda a: min(max(int(a), 0), self.n)
        return slice(clip(y - hy), clip(y + hy + 1)), slice(clip(x - hx), clip(x + hx + 1))

    def soft(self, d):
        """Coverage of a pixel whose centre lies d face units inside an edge: a one-pixel
        anti-aliased ramp."""
        d = d * (1 / self.px)
        d += 0.5
        # np.clip, without its Python-level overhead
        return np.minimum(np.maximum(d, 0, out=d), 1, out=d)

    def ellipse(self, w, cu, cv, a, b, ring=None):
        """Coverage of an ellipse (or of its outline, ring = line width) over the window w."""
        du, dv = (self.U[w] - cu) / a, (self.V[w] - cv) / b
        # ~ distance to outline
        d = (1 - du * du - dv * dv) / (2 * np.sqrt((du / a) ** 2 + (dv / b) ** 2) + 1e-6)
        return self.soft(d) if ring is None else self.soft(ring / 2 - np.abs(d))

    def band(self, w, cu, hw, top, bottom):
        """Coverage of the region between two parabolas v = p0 + p1 t + p2 t^2, t = (u - cu) / hw in
        [-1, 1]."""
        t = (self.U[w] - cu) / hw
        v = self.V[w]
        below_top = self.soft(v - (top[0] + t * (top[1] + t * top[2])))
        above_bottom = self.soft(bottom[0] + t * (bottom[1] + t * bottom[2]) - v)
        return below_top * above_bottom * self.soft(hw * (1 - np.abs(t)))

    def paint(self, w, alpha, colour):
        img = self.img[:, w[0], w[1]]  # a view: painting writes into the canvas
        img += alpha * (np.asarray(colour, dtype=np.float32).reshape(3, 1, 1) - img)

    def draw_ellipse(self, cu, cv, a, b, colour, opacity=1.0, ring=None):
        if opacity < 0.01:
            return
        m = 0 if ring is None else ring
        w = self.window(cu - a - m, cu + a + m, cv - b - m, cv + b + m)
        self.paint(w, opacity * self.ellipse(w, cu, cv, a, b, ring), colour)

    def draw_band(self, cu, hw, top, bottom, colour, opacity=1.0, mask=None):
        if opacity < 0.01:
            return
        lo = min(top[0] - abs(top[1]) + min(top[2], 0), top[0] + top[1] + top[2],
                 top[0] - top[1] + top[2])
        hi = max(bottom[0] + abs(bottom[1]) + max(bottom[2], 0), bottom[0] + bottom[1] + bottom[2])
        w = self.window(cu - hw, cu + hw, lo, hi)
        alpha = self.band(w, cu, hw, top, bottom) * opacity
        self.paint(w, alpha if mask is None else alpha * mask[w], colour)


def _identity(rng):
    """A face's identity: its shapes, colours and the resting positions that expressions move."""
    u = rng.uniform
    fw, fh, jaw = u(0.82, 1.0), u(1.15, 1.35), u(0.0, 0.35)
    skin = SKIN[0] + (SKIN[1] - SKIN[0]) * u() + rng.normal(0, 0.02, 3).astype(np.float32)
    hair = HAIR[rng.integers(len(HAIR))] * u(0.8, 1.2)
    eye_y, eye_dx, eye_w, eye_h = u(-0.3, -0.18), u(0.36, 0.46), u(0.16, 0.21), u(0.07, 0.1)
    brow_gap, brow_arch, brow_th = u(0.17, 0.25), u(0.0, 0.05), u(0.03, 0.05)
    nose_y, nose_w = u(0.2, 0.32), u(0.09, 0.14)
    mouth_y, mouth_w, lip = u(0.56, 0.68), u(0.24, 0.33), u(0.035, 0.06)
    return SimpleNamespace(fw=fw, fh=fh, jaw=jaw, skin=skin, hair=hair, eye_y=eye_y, eye_dx=eye_dx,
                           eye_w=eye_w, eye_h=eye_h, brow_gap=brow_gap, brow_arch=brow_arch,
                           brow_th=brow_th, nose_y=nose_y, nose_w=nose_w, mouth_y=mouth_y,
                           mouth_w=mouth_w, lip=lip)


def _scene(rng, n, look, f):
    """The canvas, posed as `look` asks, and its background: -> (canvas, x, y, noise)."""
    u = rng.uniform
    eye_y, eye_dx = f.eye_y, f.eye_dx
    # nuisances: pose, background, lighting, noise
    # the eye centres land near (±ALIGNED_EYE_DX, ALIGNED_EYE_Y) in [-1, 1] image units
    if look in ("aligned", "wild"):  # wild: a face detector's loose crop, not an aligned one
        zoom, roll, shift = ((0.95, 1.05), 5, 0.03) if look == "aligned" else ((0.7, 1.1), 25, 0.2)
        scale = EXTENT * ALIGNED_EYE_DX / eye_dx * u(*zoom)
        k = EXTENT / scale
        cv = _Canvas(n, math.radians(u(-roll, roll)), scale,
                     (u(-shift, shift), ALIGNED_EYE_Y - eye_y / k + u(-shift, shift)))
    else:
        cv = _Canvas(n, math.radians(u(-15, 15)), u(0.85, 1.15), u(-0.1, 0.1, 2))
    x, y, noise = _pixel_grid(n)
    phi = u(0, 2 * math.pi)
    c0, c1 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    ramp = (x * math.cos(phi) + y * math.sin(phi) + 1) / 2
    cv.img[:] = c0[:, None, None] + ramp * (c1 - c0)[:, None, None]
    for _ in range(rng.integers(2, 6)):  # clutter
        cu, cvv, a, b = u(-2.2, 2.2), u(-2.2, 2.2), u(0.1, 0.7), u(0.1, 0.7)
        if u() < 0.5:
            cv.draw_ellipse(cu, cvv, a, b, rng.uniform(0, 1, 3))
        else:
            cv.draw_band(cu, a, (cvv - b, 0, 0), (cvv + b, 0, 0), rng.uniform(0, 1, 3))
    return cv, x, y, noise


def _head(cv, rng, f, n):
    """Clothes, neck, hair behind, ears, the face and its fringe."""
    u = rng.uniform
    fw, fh, jaw, skin, hair, eye_y, mouth_y = f.fw, f.fh, f.jaw, f.skin, f.hair, f.eye_y, f.mouth_y
    # head: clothes, neck, hair behind, ears, face, fringe
    cv.draw_ellipse(0, fh + 0.95, 1.7, 0.75, rng.uniform(0, 1, 3))
    cv.draw_band(0, 0.4 * fw, (0.5 * fh, 0, 0), (fh + 0.6, 0, 0), skin * 0.85)
    style = rng.integers(4)  # 0 bald, 1 short, 2-3 long
    if style >= 2:
        cv.draw_band(0, fw * 1.15, (-0.2, 0, 0), (fh + 0.2, 0, 0), hair)
    if style >= 1:
        cv.draw_ellipse(0, -0.15, fw * 1.12, fh * 1.02, hair)
    for s in (-1, 1):
        cv.draw_ellipse(s * fw * 0.97, eye_y + 0.18, 0.12, 0.2, skin * 0.92)
    w = cv.window(-fw, fw, -fh, fh)
    face = np.zeros((n, n), dtype=np.float32)  # face coverage, to clip the fringe and the beard
    narrowing = 1 - jaw * np.clip(cv.V[w] / fh, 0, 1)  # the jaw narrows the lower half
    face[w] = cv.soft(fw * (1 - np.sqrt((cv.U[w] / (fw * narrowing)) ** 2 + (cv.V[w] / fh) ** 2)))
    cv.paint(w, face[w], skin)
    if style >= 1:
        cv.draw_band(0, fw * 1.05, (-fh * 1.2, 0, 0), (-fh * u(0.55, 0.8), u(-0.15, 0.15), u(0,
                                                                                             0.35)),
                     hair, mask=face)
    if u() < 0.15:  # beard
        cv.draw_band(0, fw, (mouth_y - 0.2, 0, 0.25), (fh * 1.05, 0, -0.6), hair * 0.9, mask=face)


def _eyes(cv, rng, f, au, marks):
    """Both eyes, and their landmarks into `marks`."""
    u = rng.uniform
    skin, eye_y, eye_dx, eye_w, eye_h = f.skin, f.eye_y, f.eye_dx, f.eye_w, f.eye_h
    # eyes: sclera, iris, pupil, outline; eye_open widens (surprise, fear) or narrows (smile,
    # squint) the opening
    h = eye_h * np.clip(1 + 0.55 * au["eye_open"], 0.15, 2.0)
    iris, gaze = IRIS[rng.integers(len(IRIS))], u(-0.04, 0.04, 2)
    for s, side in ((-1, "left"), (1, "right")):
        cu = s * eye_dx
        w = cv.window(cu - eye_w - 0.05, cu + eye_w + 0.05, eye_y - 0.15, eye_y + 0.15)
        sclera = cv.ellipse(w, cu, eye_y, eye_w, h)
        cv.paint(w, sclera, (0.95, 0.94, 0.92))
        cv.paint(w, sclera * cv.ellipse(w, cu + gaze[0], eye_y + gaze[1], 0.075, 0.075), iris)
        cv.paint(w, sclera * cv.ellipse(w, cu + gaze[0], eye_y + gaze[1], 0.035, 0.035), (0.02,
                                                                                          0.02,
                                                                                          0.02))
        cv.paint(w, cv.ellipse(w, cu, eye_y, eye_w, h, ring=0.03), skin * 0.35)
        marks[f"eye_{side}_outer"], marks[f"eye_{side}_inner"] = (cu + s * eye_w,
                                                                  eye_y), (cu - s * eye_w, eye_y)
        marks[f"eye_{side}_centre"] = (cu, eye_y)


def _brows(cv, f, au, marks):
    """Both brows and the frown lines, and their landmarks into `marks`."""
    skin, hair, eye_y, eye_dx, eye_w = f.skin, f.hair, f.eye_y, f.eye_dx, f.eye_w
    brow_gap, brow_arch, brow_th = f.brow_gap, f.brow_arch, f.brow_th
    # brows: raised (brow_raise), inner ends raised (brow_inner, sadness / fear), lowered and knit
    # (brow_lower)
    brow = np.minimum(hair * 0.8, skin * 0.45)
    v_base = eye_y - brow_gap - 0.11 * au["brow_raise"] + 0.06 * au["brow_lower"]
    d_in, d_out = -0.1 * au["brow_inner"] + 0.08 * au["brow_lower"], 0.03 * au["brow_inner"]
    for s, side in ((-1, "left"), (1, "right")):
        u_in = s * (eye_dx - 0.8 * eye_w - 0.05 * au["brow_lower"])
        u_out = s * (eye_dx + 1.15 * eye_w)
        # v(t) through both ends
        c0, c1 = v_base - brow_arch + (d_in + d_out) / 2, s * (d_out - d_in) / 2
        cv.draw_band((u_in + u_out) / 2, abs(u_out - u_in) / 2, (c0 - brow_th,
                                                                 c1 + 0.3 * s * brow_th, brow_arch),
                     (c0 + brow_th, c1 - 0.3 * s * brow_th, brow_arch), brow)
        marks[f"brow_{side}_inner"] = (u_in, v_base + d_in)
        marks[f"brow_{side}_outer"] = (u_out, v_base + d_out)
        cv.draw_ellipse(s * 0.05, eye_y - 0.06, 0.012, 0.06, skin * 0.6,
                        opacity=min(0.8 * au["brow_lower"], 1))  # frown lines


def _nose(cv, f, au, marks):
    """The nose and its wrinkles, and its tip into `marks`."""
    skin, eye_y, nose_y, nose_w = f.skin, f.eye_y, f.nose_y, f.nose_w
    # nose: tip shading, nostrils (raised by the wrinkle), wrinkles across the bridge (disgust)
    cv.draw_ellipse(0, nose_y, nose_w * 0.6, 0.06, skin * 0.85, opacity=0.6)
    for s in (-1, 1):
        cv.draw_ellipse(s * nose_w * 0.55, nose_y + 0.03 - 0.04 * au["nose_wrinkle"], 0.04, 0.022,
                        skin * 0.3, opacity=0.8)
    for k in range(3):
        v = eye_y + 0.06 + k * 0.06
        cv.draw_band(0, 0.08, (v - 0.012, 0, -0.02), (v + 0.012, 0, -0.02), skin * 0.5,
                     opacity=min(0.9 * au["nose_wrinkle"], 1))
    marks["nose_tip"] = (0, nose_y)


def _mouth(cv, f, au, marks):
    """The lips, the mouth's opening and teeth, and its landmarks into `marks`."""
    skin, mouth_y, mouth_w, lip = f.skin, f.mouth_y, f.mouth_w, f.lip
    # mouth: corners up / down (smile), opening (mouth_open), thinner and narrower lips (lip_press),
    # sideways stretch (fear), upper lip raised (nose wrinkle); all edges are parabolas through the
    # corners
    mw = mouth_w * max(1 + 0.22 * max(au["smile"],
                                      0) + 0.3 * au["stretch"] - 0.25 * au["lip_press"], 0.4)
    dy = -0.13 * au["smile"]
    gap_up, gap_lo = 0.08 * au["mouth_open"] + 0.05 * au["nose_wrinkle"], 0.2 * au["mouth_open"]
    lip_up, lip_lo = lip * max(1 - 0.7 * au["lip_press"],
                               0.2), 1.3 * lip * max(1 - 0.6 * au["lip_press"], 0.2)
    lips = skin * np.array([0.85, 0.55, 0.55], dtype=np.float32) + np.array([0.08, 0, 0],
                                                                            dtype=np.float32)
    top, bottom = mouth_y - gap_up - lip_up, mouth_y + gap_lo + lip_lo
    cv.draw_band(0, mw, (top, 0, dy + gap_up + lip_up), (bottom, 0, dy - gap_lo - lip_lo), lips)
    if gap_up + gap_lo > 0.01:
        gap = ((mouth_y - gap_up, 0, dy + gap_up), (mouth_y + gap_lo, 0, dy - gap_lo))
        cv.draw_band(0, mw, *gap, (0.25, 0.05, 0.05))
        if au["smile"] > 0.3:  # teeth show in a smile
            cv.draw_band(0, mw, gap[0], (mouth_y - gap_up + 0.5 * (gap_up + gap_lo), 0, dy), (0.92,
                                                                                              0.9,
                                                                                              0.85))
    cv.draw_band(0, mw, (mouth_y - 0.01, 0, dy), (mouth_y + 0.01, 0, dy), skin * 0.3)  # lip seam
    cv.draw_band(0, 0.12, (bottom + 0.06, 0, 0.03), (bottom + 0.08, 0, 0.03), skin * 0.6,
                 opacity=min(au["lip_press"], 1))  # chin crease of pressed lips
    marks["mouth_left"], marks["mouth_right"] = (-mw, mouth_y + dy), (mw, mouth_y + dy)
    marks["upper_lip"], marks["lower_lip"] = (0, top), (0, bottom)


def draw_face(rng, label, n, look="aligned"):
    """One random face showing expression `label` -> (uint8 [3, n, n], float32 [15, 2] pixel
    landmarks).

    look "aligned": a tight, aligned face crop as RAF-DB's aligned/, AffectNet's and FERPlus's faces
    are (the face fills the frame, the eyes at a fixed height and distance, ±5° of roll); "scene":
    head and shoulders in a cluttered scene, ±15° of roll, 0.85-1.15 scale; "wild": a face
    detector's loose crop (0.7-1.1 scale, ±25° of roll, shifted by up to a tenth of the frame) on
    clutter, harsher light, and in 40 % of faces an occluder.
    """
    u = rng.uniform
    au = EXPRESSIONS[label] * u(0.3, 1.0) + rng.normal(0, AU_NOISE,
                                                       len(ACTION_UNITS)).astype(np.float32)
    au = dict(zip(ACTION_UNITS, au))
    # one-sided muscles
    for unit in ("brow_inner", "brow_lower", "mouth_open", "lip_press", "nose_wrinkle"):
        au[unit] = max(au[unit], 0.0)
    # identity: shapes, colours and the resting positions that expressions move
    f = _identity(rng)
    cv, x, y, noise = _scene(rng, n, look, f)
    _head(cv, rng, f, n)
    marks = {}
    _eyes(cv, rng, f, au, marks)
    _brows(cv, f, au, marks)
    _nose(cv, f, au, marks)
    _mouth(cv, f, au, marks)
    eye_y, eye_dx, eye_w = f.eye_y, f.eye_dx, f.eye_w
    if u() < 0.15:  # glasses
        frame = rng.uniform(0, 0.5, 3)
        for s in (-1, 1):
            cv.draw_ellipse(s * eye_dx, eye_y + 0.02, eye_w + 0.08, 0.16, frame, ring=0.03)
        cv.draw_band(0, eye_dx - eye_w - 0.08, (eye_y - 0.04, 0, 0), (eye_y - 0.01, 0, 0), frame)

    if look == "wild" and u() < 0.4:  # an occluder (a hand, a cup, a microphone) on the face
        cv.draw_ellipse(u(-0.9, 0.9), u(-0.5, 1.1), u(0.15, 0.45), u(0.15, 0.45),
                        rng.uniform(0, 1, 3) if u() < 0.5 else f.skin * u(0.8, 1.1))
    # lighting gradient, exposure, sensor noise (wild: harsher, up to a far corner gone black, as
    # under a hard side light)
    phi, grad = u(0, 2 * math.pi), u(0, 0.35 if look != "wild" else 0.8)
    light = u(0.75, 1.15) * (1 + grad * (x * math.cos(phi) + y * math.sin(phi)))
    ox, oy = rng.integers(n, size=2)
    img = cv.img * light + u(0.005, 0.04) * noise[:, oy:oy + n, ox:ox + n]
    img = torch.from_numpy(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    pts = np.array([marks[k] for k in SYNTHETIC_LANDMARKS], dtype=np.float32)
    px, py = cv.to_pixels(pts[:, 0], pts[:, 1])
    return img, torch.from_numpy(np.stack([px, py], 1).astype(np.float32))
