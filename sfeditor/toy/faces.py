"""Procedural toy portraits ("toy-faces"): head-and-shoulders framing like FFHQ.

Regions (label id = index): bg, hair, clothes, skin, eyes, mouth.
Eyebrows (with their own colour) and the eye-liner are ``eyes``; ears, neck and
the nose are ``skin``; an open mouth (lips, dark inside, teeth) is all ``mouth``.

Renderer v5: every region's parameters change only that region's pixels, up to
anti-aliasing and where a region's *shape* moves a boundary (a new hairstyle
covers skin).  Hair, clothes, eyes and mouth are laid out on the head's nominal
size (the global scale), not on the skin group's head width or neck width, and
no region takes its colour from another (lips, eye-liner and eyebrows have their
own colours).  Eyes are ~1.5x and the mouth ~1.3x the v4 size.
"""
from __future__ import annotations

import numpy as np

from ._common import (
    F32, Canvas, Sampler, box, circle, col, ellipse, fill_masked, grid, pick,
    sat, smin, union,
)

REGIONS = ["bg", "hair", "clothes", "skin", "eyes", "mouth"]
BG, HAIR, CLOTHES, SKIN, EYES, MOUTH = range(6)

#: Which region each sampled parameter describes ("global": the pose and lighting that the paper's
#: global codes control).  A region swap (``sfeditor.toy.render_swap``) redraws one group from
#: another seed; shapes that touch (hair around the head) follow the parameters, as in a photo.
PARAM_GROUPS = {
    "global": ("scale", "pos_x", "pos_y", "rotation", "light"),
    "bg": ("bg1", "bg2", "bg_grey", "bg_desat", "bg_angle", "bg_pattern", "bg_pattern_amp",
           "bg_stripe_freq", "bg_dot_freq", "bg_dot_radius", "bg_vignette"),
    "hair": ("hair_color", "hair_bright", "hair_style", "hair_volume", "hairline", "hairline_curve",
             "hair_part", "fringe"),
    "clothes": ("clothes", "clothes_desat", "clothes2", "shoulder_height", "shoulder_width",
                "shoulder_slope", "neckline", "neckline_depth", "clothes_striped", "clothes_stripe_freq"),
    "skin": ("skin_tone", "skin_warmth", "head_width", "head_height", "jaw_width", "ear_height",
             "neck_width", "nose_height"),
    "eyes": ("eye_height", "eye_spacing", "eye_size", "eye_openness", "gaze", "iris_color", "liner_color",
             "liner_dark", "brow_color", "brow_bright", "brow_gap", "brow_tilt", "brow_thickness"),
    "mouth": ("mouth_height", "mouth_width", "lip_thickness", "mouth_open", "smile", "lip_color", "lip_tint"),
}

HAIR_STYLES = ["short", "long", "bob", "afro", "bun", "buzz"]
_STYLE_W = [0.24, 0.25, 0.17, 0.11, 0.13, 0.10]

_SKIN = np.array([
    (0.99, 0.88, 0.80), (0.95, 0.77, 0.65), (0.85, 0.64, 0.49),
    (0.68, 0.47, 0.33), (0.48, 0.31, 0.21), (0.31, 0.20, 0.14),
], dtype=F32)

_HAIR = [
    (0.07, 0.06, 0.06), (0.20, 0.13, 0.09), (0.36, 0.23, 0.14), (0.55, 0.40, 0.25),
    (0.86, 0.72, 0.44), (0.92, 0.88, 0.76), (0.52, 0.18, 0.09), (0.80, 0.40, 0.15),
    (0.58, 0.58, 0.60), (0.86, 0.42, 0.62), (0.24, 0.36, 0.78),
]
_HAIR_W = [0.22, 0.2, 0.16, 0.1, 0.1, 0.04, 0.06, 0.05, 0.04, 0.015, 0.015]

_IRIS = [
    (0.30, 0.17, 0.08), (0.15, 0.09, 0.05), (0.25, 0.45, 0.75), (0.30, 0.55, 0.35),
    (0.50, 0.40, 0.20), (0.50, 0.55, 0.60),
]
_IRIS_W = [0.3, 0.25, 0.18, 0.1, 0.1, 0.07]

_LINER = [(0.10, 0.07, 0.06), (0.25, 0.15, 0.12), (0.38, 0.26, 0.22), (0.18, 0.16, 0.22)]
_LIP = [(0.72, 0.30, 0.32), (0.80, 0.45, 0.42), (0.55, 0.22, 0.22), (0.62, 0.36, 0.30),
        (0.40, 0.20, 0.18), (0.78, 0.18, 0.26), (0.86, 0.56, 0.52)]
_LIP_W = [0.25, 0.2, 0.15, 0.15, 0.1, 0.08, 0.07]


def _skin_color(t: np.ndarray) -> np.ndarray:
    xs = np.linspace(0.0, 1.0, len(_SKIN))
    ch = [np.interp(t.ravel(), xs, _SKIN[:, c]) for c in range(3)]
    return np.stack(ch, axis=-1).astype(F32).reshape(t.shape + (3,))


def _background(P: Sampler, x, y, n: int, size: int) -> np.ndarray:
    c1 = P.color("bg1", 0.15, 0.95)
    c2 = P.color("bg2", 0.15, 0.95)
    grey = P.u("bg_grey", 0.25, 0.85)
    desat = col(P.u("bg_desat", 0.0, 0.8))
    c1 = c1 + desat * (col(grey) - c1)
    c2 = c2 + desat * (col(grey) - c2)
    ang = P.u("bg_angle", 0.0, 2 * np.pi)
    ca, sa = np.cos(ang), np.sin(ang)
    proj = x * ca + y * sa  # [N, S, S]
    t = sat(proj * 0.5 + 0.5)
    img = c1 + t[..., None] * (c2 - c1)
    kind = P.choice("bg_pattern", [0.5, 0.25, 0.25])  # plain / stripes / dots
    amp = P.u("bg_pattern_amp", 0.06, 0.18)
    pat = np.zeros((n, size, size), dtype=F32)
    ms = kind == 1
    if ms.any():
        f = P.u("bg_stripe_freq", 6.0, 16.0)[ms]
        s = np.sin(proj[ms] * f * np.pi)
        pat[ms] = sat(s * 3.0 + 0.5)
    md = kind == 2
    if md.any():
        f = P.u("bg_dot_freq", 3.0, 7.0)[md]
        fx = (x * f) % 1.0 - 0.5
        fy = (y * f) % 1.0 - 0.5
        r = P.u("bg_dot_radius", 0.15, 0.32)[md]
        dd = circle(fx, fy, r) / f
        pat[md] = sat(0.5 - dd * (size / 2.0))
    vig = P.u("bg_vignette", 0.0, 0.35)
    shade = 1.0 - amp * pat - vig * (x * x + y * y) * 0.5
    img *= shade[..., None]
    return img


def render(seeds_u64: np.ndarray, size: int, donor=None):
    """Render a batch; returns (images uint8 [N,S,S,3], labels uint8 [N,S,S], params).

    ``donor`` (seeds, take) draws the parameters ``take(name)`` accepts from other seeds (a swap)."""
    n = len(seeds_u64)
    P = Sampler(seeds_u64, "toy-faces", donor)
    x, y = grid(size)

    # ---- global pose / lighting
    s = P.u("scale", 1.1, 1.36)
    tx = P.u("pos_x", -0.1, 0.1)
    ty = P.u("pos_y", -0.07, 0.07)
    rot = P.u("rotation", -15.0, 15.0) * F32(np.pi / 180.0)
    light = P.u("light", -1.0, 1.0)

    cv = Canvas(n, size, base=_background(P, x, y, n, size), label=BG)

    hx, hy = tx, ty - 0.2
    pivot = 0.42 * s
    cr, sr = np.cos(rot), np.sin(rot)
    dx = x - hx
    dy = y - (hy + pivot)
    u = dx * cr + dy * sr                 # head frame (origin = head centre)
    v = dy * cr - dx * sr + pivot
    ub = x - tx * 0.6                     # body frame (broadcast, no rotation)
    vb = y - hy

    # ---- colours
    skin = _skin_color(P.u("skin_tone"))
    skin = skin * col(P.u("skin_warmth", 0.94, 1.06)) ** np.array([-1, 0, 1], dtype=F32)
    hair_c = pick(_HAIR, P.choice("hair_color", _HAIR_W)) * col(P.u("hair_bright", 0.85, 1.15))
    cloth_c = P.color("clothes", 0.08, 0.92)
    cdesat = col(P.u("clothes_desat", 0.0, 0.7))
    cloth_c = cloth_c + cdesat * (cloth_c.mean(axis=-1, keepdims=True) - cloth_c)
    cloth_c2 = P.color("clothes2", 0.1, 0.95)

    # ---- head geometry
    a = P.u("head_width", 0.30, 0.35) * s
    b = P.u("head_height", 0.37, 0.42) * s
    a0, b0 = F32(0.34) * s, F32(0.40) * s    # nominal head: what hair and clothes are laid out on
    jaw = P.u("jaw_width", 0.74, 0.9)
    d_cran, k_cran = ellipse(u, v + 0.04 * s, a, b * 0.93, with_radius=True)
    d_jaw = ellipse(u, v - 0.12 * s, a * jaw, b * 0.76)
    d_head = smin(d_cran, d_jaw, 0.08 * s)

    style = P.choice("hair_style", _STYLE_W)
    vol = P.u("hair_volume", 0.0, 1.0)
    is_ = [style == k for k in range(len(HAIR_STYLES))]

    # ---- ears (skin, behind hair)
    ear_v = P.u("ear_height", 0.0, 0.06) * s
    d_ear = ellipse(np.abs(u) - a * 0.96, v - ear_v, 0.05 * s, 0.085 * s)
    cv.paint(d_ear, skin * 0.9, SKIN)

    # ---- hair behind head
    hair_shade_v = 1.0 - 0.25 * sat(v / (1.2 * s))
    afro = style == 3
    hshade = np.empty((n, size, size), dtype=F32)
    if (~afro).any():
        um, vm, sm = u[~afro], v[~afro], s[~afro]
        hshade[~afro] = 1.0 + 0.06 * np.sin(um * (90.0 / sm) + 3.0 * np.sin(vm * (9.0 / sm)))
    curl = None
    if afro.any():  # curly texture, also used to make the outline bumpy
        um, vm, sm = u[afro], v[afro], s[afro]
        curl = np.sin(um * (38.0 / sm)) * np.sin(vm * (38.0 / sm))
        hshade[afro] = 1.0 + 0.14 * curl
    hshade *= hair_shade_v
    hshade += 0.12 * light * u / a0

    def back_long(m):
        um, vm, am, sm = u[m], v[m], a0[m], s[m]
        length = (0.85 + 0.3 * vol[m]) * sm
        hw = am + (0.05 + 0.05 * vol[m]) * sm
        d1 = box(um, vm - (length - 0.15 * sm) * 0.5, hw, (length + 0.15 * sm) * 0.5, 0.12 * sm)
        d2 = ellipse(um, vm + 0.05 * sm, hw, b0[m] * 0.95 + 0.05 * sm)
        return union(d1, d2)

    def back_bob(m):
        um, vm, am, sm = u[m], v[m], a0[m], s[m]
        bottom = (0.3 + 0.15 * vol[m]) * sm
        hw = am + (0.06 + 0.05 * vol[m]) * sm
        d1 = box(um, vm - (bottom - 0.2 * sm) * 0.5, hw, (bottom + 0.2 * sm) * 0.5, 0.1 * sm)
        d2 = ellipse(um, vm + 0.05 * sm, hw, b0[m] * 0.95 + 0.06 * sm)
        return union(d1, d2)

    def back_afro(m):
        um, vm, am, sm = u[m], v[m], a0[m], s[m]
        ra = am + (0.14 + 0.09 * vol[m]) * sm
        rb = b0[m] + (0.08 + 0.08 * vol[m]) * sm
        d = ellipse(um, vm + 0.1 * sm, ra, rb)
        d += 0.016 * sm * curl
        return d

    d_back = fill_masked(n, (size, size), [(is_[1], back_long), (is_[2], back_bob), (is_[3], back_afro)])
    cv.paint(d_back, hair_c * 0.78, HAIR, shade=hshade)

    # ---- neck
    nw = P.u("neck_width", 0.11, 0.15) * s
    nw0 = F32(0.13) * s                   # nominal neck: what necklines and long hair are laid out on
    d_neck = box(ub, vb - 0.7, nw, 0.72, 0.03 * s)
    chin = 0.38 * s
    neck_shade = 0.72 + 0.2 * sat((vb - chin) / (0.16 * s)) + 0.06 * light * ub / nw
    cv.paint(d_neck, skin, SKIN, shade=neck_shade)

    # ---- clothes: shoulders with a neckline cut
    sh_top = P.u("shoulder_height", 0.56, 0.64) * s
    shw = P.u("shoulder_width", 0.6, 0.85) * s
    d_sh = box(ub, vb - (sh_top + 1.0) - P.u("shoulder_slope", 0.1, 0.35) / s * ub * ub, shw, 1.0, 0.26 * s)
    collar = P.choice("neckline", [0.35, 0.3, 0.2, 0.15])  # crew / v / scoop / turtleneck
    depth = P.u("neckline_depth", 0.0, 1.0)

    def neck_crew(m):
        return ellipse(ub[m], vb[m] - sh_top[m], nw0[m] * 1.35, (0.05 + 0.06 * depth[m]) * s[m])

    def neck_v(m):
        tip = sh_top[m] + (0.12 + 0.16 * depth[m]) * s[m]
        return (vb[m] - tip + 1.6 * np.abs(ub[m])) * F32(1.0 / np.sqrt(1 + 1.6 ** 2))

    def neck_scoop(m):
        return ellipse(ub[m], vb[m] - sh_top[m], nw0[m] * 2.2, (0.1 + 0.1 * depth[m]) * s[m])

    d_cut = fill_masked(n, (size, size), [(collar == 0, neck_crew), (collar == 2, neck_scoop)])
    d_cut = np.minimum(d_cut, fill_masked(n, (size, size), [(collar == 1, neck_v)]))
    d_cloth = np.maximum(d_sh, -d_cut)
    d_turtle = box(ub, vb - (chin + 0.03 * s + 0.6), 0.17 * s, 0.6, 0.04 * s)
    d_cloth = np.where((collar == 3)[:, None, None], np.minimum(d_cloth, d_turtle), d_cloth)
    striped = P.flag("clothes_striped", 0.25)
    stripe_f = P.u("clothes_stripe_freq", 14.0, 30.0) / s
    stripes = np.zeros((n, size, 1), dtype=F32)
    st = striped[:, 0, 0] > 0
    if st.any():
        stripes[st] = sat(np.sin(vb[st] * stripe_f[st]) * 2.0 + 0.5)
    cshade = 1.0 + 0.12 * light * ub / shw - 0.18 * sat((vb - sh_top) / (0.5 * s))
    cshade = cshade - 0.12 * sat(1.0 - np.abs(ub) / (nw0 * 2.2)) * sat(1.0 - (vb - sh_top) / (0.25 * s))
    ccol = cloth_c + stripes[..., None] * (cloth_c2 - cloth_c)
    cv.paint(d_cloth, ccol, CLOTHES, shade=cshade)

    # ---- long hair locks falling in front of the shoulders
    def locks(m):
        # the part of the long back hair outside the neck falls over the shoulders
        inner = np.maximum(a0[m] * 0.72, nw0[m] + 0.06 * s[m]) - np.abs(u[m])
        return np.maximum(d_back[m], inner)

    d_locks = fill_masked(n, (size, size), [(is_[1], locks)])
    cv.paint(d_locks, hair_c * 0.95, HAIR, shade=hshade)

    # ---- head (skin) with soft shading
    shade = 1.04 - 0.2 * k_cran ** 4 + 0.1 * light * u / a
    shade -= 0.1 * sat((v - 0.25 * s) / (0.2 * s))
    cv.paint(d_head, skin, SKIN, shade=shade)

    # ---- facial features are drawn inside a window covering all faces of the batch
    cu = np.array([-0.36, 0.36, -0.36, 0.36], dtype=F32) * s
    cvv = np.array([-0.28, -0.28, 0.46, 0.46], dtype=F32) * s - pivot
    fx = hx + cu * cr - cvv * sr
    fy = hy + pivot + cu * sr + cvv * cr
    half = size / 2.0
    r0 = max(int(np.floor((fy.min() + 1.0) * half)) - 3, 0)
    r1 = min(int(np.ceil((fy.max() + 1.0) * half)) + 3, size)
    c0 = max(int(np.floor((fx.min() + 1.0) * half)) - 3, 0)
    c1 = min(int(np.ceil((fx.max() + 1.0) * half)) + 3, size)
    u_full, v_full, cv_full = u, v, cv
    u, v = u[:, r0:r1, c0:c1], v[:, r0:r1, c0:c1]
    cv = cv.window(r0, r1, c0, c1)

    # nose: soft shadow on the side away from the light, plus the nose tip
    nose_v = P.u("nose_height", 0.11, 0.15) * s
    d_nose = ellipse(u + light * 0.025 * s, v - nose_v, 0.03 * s, 0.055 * s)
    cv.paint(d_nose, skin * 0.78, None, opacity=0.35, soft=3.0)
    d_nost = ellipse(u, v - nose_v - 0.045 * s, 0.035 * s, 0.012 * s)
    cv.paint(d_nost, skin * 0.6, None, opacity=0.45, soft=1.5)

    # ---- eyes (v5: ~1.5x the v4 size; liner and eyebrows have their own colours and are ``eyes``)
    ey = P.u("eye_height", -0.02, 0.05) * s
    sep = P.u("eye_spacing", 0.155, 0.18) * s
    ew = P.u("eye_size", 0.075, 0.105) * s
    eh = ew * P.u("eye_openness", 0.42, 0.62)
    ue = np.abs(u) - sep
    ve = v - ey
    liner_c = pick(_LINER, P.choice("liner_color", [0.4, 0.3, 0.15, 0.15])) * col(P.u("liner_dark", 0.8, 1.25))
    d_liner = ellipse(ue, ve, ew + 0.014 * s, eh + 0.014 * s)
    cv.paint(d_liner, liner_c, EYES)
    d_sclera = ellipse(ue, ve, ew, eh)
    cv.paint(d_sclera, np.array([0.95, 0.94, 0.91], dtype=F32), EYES)
    gaze = P.u("gaze", -0.5, 0.5) * ew * 0.5
    ir = np.minimum(ew * 0.55, eh * 1.1)
    ui = np.abs(u - gaze) - sep
    iris_c = pick(_IRIS, P.choice("iris_color", _IRIS_W))
    cv.paint(np.maximum(circle(ui, ve, ir), d_sclera), iris_c, EYES)
    cv.paint(np.maximum(circle(ui, ve, ir * 0.45), d_sclera), np.array([0.04, 0.03, 0.03], dtype=F32), EYES)

    # eyebrows: part of the eyes group, with their own colour (not the hair's)
    brow_c = pick(_HAIR[:9], P.choice("brow_color", _HAIR_W[:9])) * col(P.u("brow_bright", 0.6, 0.95))
    brow_v = ey - eh - P.u("brow_gap", 0.045, 0.07) * s
    tilt = P.u("brow_tilt", -0.25, 0.35)
    ubr = ue - 0.01 * s
    d_brow = box(ubr, v - brow_v + tilt * ubr, ew * 1.15, P.u("brow_thickness", 0.018, 0.03) * s, 0.015 * s)
    cv.paint(d_brow, brow_c, EYES)

    # ---- mouth (v5: ~1.3x the v4 size; the lips have their own colour, not a tint of the skin)
    mv = P.u("mouth_height", 0.235, 0.275) * s
    mw = P.u("mouth_width", 0.09, 0.15) * s
    mh = P.u("lip_thickness", 0.028, 0.048) * s
    opn = sat(P.u("mouth_open", -0.8, 1.0)) * 0.085 * s
    smile = P.u("smile", -1.0, 3.5) / s
    vm = v - mv + smile * u * u
    lip_c = pick(_LIP, P.choice("lip_color", _LIP_W)) * col(P.u("lip_tint", 0.85, 1.1))
    d_lips = ellipse(u, vm, mw, mh + opn * 0.6)
    cv.paint(d_lips, lip_c, MOUTH)
    d_line = ellipse(u, vm, mw * 0.9, 0.008 * s + opn * 0.5)
    cv.paint(d_line, np.array([0.22, 0.05, 0.07], dtype=F32), MOUTH, opacity=0.9)
    d_teeth = np.maximum(d_line, vm + opn * 0.1)
    teeth_on = (opn > 0.02 * s)
    d_teeth = np.where(teeth_on, d_teeth, F32(1.0))
    cv.paint(d_teeth, np.array([0.92, 0.9, 0.85], dtype=F32), MOUTH)

    u, v, cv = u_full, v_full, cv_full

    # ---- hair in front: cap over the skull with a hairline; bun on top
    hl0 = P.u("hairline", -0.24, -0.15) * s
    curve = P.u("hairline_curve", 1.6, 2.4) / s
    part = P.u("hair_part", -0.2, 0.2)
    fringe = P.flag("fringe", 0.3)
    hl = hl0 + fringe * 0.08 * s
    curve = curve * (1.0 - 0.6 * fringe)
    d_hl = v - (hl + curve * u * u + part * u)
    capv = np.where((style == 3)[:, None, None], 0.1 + 0.06 * vol, 0.012 + 0.035 * vol)
    capv = np.where((style == 5)[:, None, None] | (style == 4)[:, None, None], F32(0.008), capv) * s
    d_cap = ellipse(u, v + 0.05 * s + capv * 0.3, a0 + capv, b0 * 0.95 + capv)
    if afro.any():
        d_cap[afro] += 0.016 * s[afro] * curl
    d_front = np.maximum(d_cap, d_hl)

    def bun(m):
        sm = s[m]
        r = (0.1 + 0.05 * vol[m]) * sm
        return circle(u[m], v[m] + b0[m] + 0.08 * sm, r)

    d_bun = fill_masked(n, (size, size), [(is_[4], bun)])
    d_front = np.minimum(d_front, d_bun)
    # a buzz cut is opaque too (v4 blended it with the skin, so the skin tone recoloured hair pixels)
    buzz = (style == 5)[:, None, None]
    fshade = np.where(buzz, hshade * (0.82 + 0.1 * np.sin(u * (140.0 / s)) * np.sin(v * (140.0 / s))), hshade)
    cv.paint(d_front, hair_c, HAIR, shade=fshade)

    return cv.to_uint8(), cv.lab, P.params
