"""Procedural toy cars ("toy-cars"): a side view of a car on a landscape.

Regions (label id = index): background_top (sky, sun, clouds),
background_bottom (ground, road, hills), car_body (body, windows, lights,
wheel wells), wheels (tyre and rim).

Renderer v5: every region's parameters change only that region's pixels, up to
anti-aliasing and where a region's *shape* moves a boundary.  Wheel size and
style belong to ``wheels``; wheelbase, ride height, the wheel arches and the
car's shadow to the global pose (the body type no longer sets wheel size or
wheelbase); the sky's gradient follows the horizon (global), not the hills, and
the ground's haze is a fixed colour, not the sky's.
"""
from __future__ import annotations

import numpy as np

from ._common import (
    F32, Canvas, Sampler, box, circle, col, ellipse, grid, pick, sat, smin,
)

REGIONS = ["background_top", "background_bottom", "car_body", "wheels"]
SKY, GROUND, BODY, WHEELS = range(4)

#: Which region each sampled parameter describes ("global": the car's placement, wheelbase, ride
#: height and the horizon, what the global codes align).  A ``wheels`` swap changes tyre size,
#: rims and spokes; a ``car_body`` swap changes the body's shape and paint, never the wheels.
PARAM_GROUPS = {
    "global": ("car_scale", "facing_left", "car_depth", "car_x", "horizon", "wheelbase", "wheel_shift",
               "ride_height"),
    "background_top": ("sky", "sky_bright", "sky_hor_bright", "sun_x", "sun_y", "sun_radius", "sun",
                       "clouds", "cloud0_x", "cloud0_y", "cloud0_w", "cloud1_x", "cloud1_y", "cloud1_w"),
    "background_bottom": ("hill_amp", "hills", "hill_freq", "hill_phase", "ground", "ground_bright", "road",
                          "road_far", "road_near", "road_bright", "dash_phase"),
    "car_body": ("body_type", "length", "body_height", "roof_height", "cabin_shift",
                 "cabin_offset", "paint", "paint_bright", "pillar_pos", "glass_tint", "reflect_phase"),
    "wheels": ("wheel_size", "rim_ratio", "rim_color", "spokes", "wheel_angle", "spoke_width", "disc_rim",
               "tyre_wall"),
}

BODY_TYPES = ["sedan", "hatchback", "suv", "sports"]
_TYPE_W = [0.3, 0.25, 0.25, 0.2]

# per type: half length, body height, roof height, windshield base (frac of L),
# roof front (frac), roof rear (frac), rear base (frac); v5: wheel radius is the wheels group's
_TYPE = np.array([
    # L     hb     hr     wb_f   roof_f  roof_r  rear_b
    (0.80, 0.22, 0.19, 0.42, 0.14, -0.42, -0.72),   # sedan
    (0.72, 0.24, 0.21, 0.40, 0.12, -0.80, -0.94),   # hatchback
    (0.78, 0.30, 0.25, 0.52, 0.32, -0.92, -0.97),   # suv / van
    (0.84, 0.17, 0.14, 0.28, -0.05, -0.42, -0.78),  # sports
], dtype=F32)

_SKY_TOP = [(0.20, 0.42, 0.80), (0.35, 0.55, 0.88), (0.25, 0.22, 0.50), (0.55, 0.58, 0.64),
            (0.10, 0.12, 0.30)]
_SKY_HOR = [(0.72, 0.84, 0.95), (0.85, 0.90, 0.96), (0.98, 0.62, 0.38), (0.80, 0.80, 0.82),
            (0.85, 0.45, 0.35)]
_SKY_W = [0.35, 0.25, 0.15, 0.15, 0.10]

_GROUND = [(0.33, 0.33, 0.35), (0.30, 0.50, 0.22), (0.80, 0.70, 0.48), (0.45, 0.38, 0.30),
           (0.86, 0.88, 0.90)]
_GROUND_W = [0.35, 0.3, 0.15, 0.12, 0.08]

_PAINT = [(0.80, 0.08, 0.08), (0.10, 0.22, 0.60), (0.92, 0.92, 0.92), (0.10, 0.10, 0.11),
          (0.62, 0.64, 0.67), (0.95, 0.75, 0.10), (0.10, 0.45, 0.25), (0.95, 0.45, 0.10),
          (0.35, 0.12, 0.40), (0.35, 0.70, 0.85)]
_PAINT_W = [0.14, 0.13, 0.14, 0.13, 0.13, 0.07, 0.07, 0.07, 0.06, 0.06]

_RIM = [(0.78, 0.79, 0.82), (0.15, 0.15, 0.16), (0.80, 0.65, 0.30), (0.92, 0.92, 0.92),
        (0.50, 0.52, 0.55)]
_RIM_W = [0.4, 0.2, 0.1, 0.15, 0.15]


def _halfplane_edge(u, v, u0, v0, u1, v1, inside_neg_u: bool):
    """Signed distance to the line through (u0,v0)-(u1,v1) (a non-horizontal edge).

    Inside is the side of smaller u when ``inside_neg_u`` else larger u.
    """
    slope = (u1 - u0) / (v1 - v0)
    d = (u - (u0 + (v - v0) * slope)) / np.sqrt(1.0 + slope * slope)
    return d if inside_neg_u else -d


def render(seeds_u64: np.ndarray, size: int, donor=None):
    """Render a batch; returns (images uint8 [N,S,S,3], labels uint8 [N,S,S], params).

    ``donor`` (seeds, take) draws the parameters ``take(name)`` accepts from other seeds (a swap)."""
    n = len(seeds_u64)
    P = Sampler(seeds_u64, "toy-cars", donor)
    x, y = grid(size)

    # ---- sky
    sky_i = P.choice("sky", _SKY_W)
    top = pick(_SKY_TOP, sky_i) * col(P.u("sky_bright", 0.85, 1.1))
    hor = pick(_SKY_HOR, sky_i) * col(P.u("sky_hor_bright", 0.9, 1.05))
    horizon = P.u("horizon", -0.15, 0.3)
    hill_amp = P.u("hill_amp", 0.0, 0.09) * P.flag("hills", 0.6)
    hill_f = P.u("hill_freq", 1.5, 4.5)
    hill_ph = P.u("hill_phase", 0.0, 2 * np.pi)
    bound = horizon - hill_amp * (0.5 + 0.5 * np.sin(x * hill_f + hill_ph))  # [N,1,S]
    t = sat((y + 1.0) / (horizon + 1.0))  # 0 at top, 1 at the horizon (not the hills: they are ground)
    cv = Canvas(n, size, base=top + (t * t)[..., None] * (hor - top), label=SKY)

    # sun with glow and a few clouds
    sun_x = P.u("sun_x", -0.8, 0.8)
    sun_y = P.u("sun_y", -0.85, -0.4)
    sun_r = P.u("sun_radius", 0.06, 0.12)
    sun_on = P.flag("sun", 0.4)
    dsun = circle(x - sun_x, y - sun_y, sun_r)
    glow = sat(1.0 - dsun / 0.35) ** 2 * 0.35 * sun_on
    cv.paint(dsun, np.array([1.0, 0.95, 0.75], dtype=F32), None, opacity=glow, soft=40.0)
    cv.paint(np.where(sun_on > 0, np.maximum(dsun, y - bound), F32(1.0)),
             np.array([1.0, 0.97, 0.85], dtype=F32), SKY)
    n_clouds = P.choice("clouds", [0.4, 0.35, 0.25])
    for k in range(2):
        cx = P.u(f"cloud{k}_x", -0.9, 0.9)
        cy = P.u(f"cloud{k}_y", -0.85, -0.35)
        cw = P.u(f"cloud{k}_w", 0.12, 0.25)
        dc = smin(ellipse(x - cx, y - cy, cw, cw * 0.35),
                  circle(x - cx - cw * 0.2, y - cy + cw * 0.18, cw * 0.4), 0.05)
        dc = np.maximum(dc, y - bound)
        on = (n_clouds > k)[:, None, None]
        shade = 1.0 - 0.12 * sat((y - cy) / (cw * 0.4) + 0.5)
        cv.paint(np.where(on, dc, F32(1.0)), np.array([0.97, 0.97, 0.98], dtype=F32) * shade[..., None],
                 SKY, opacity=0.92)

    # ---- ground (hills in the distance, road near the car)
    gi = P.choice("ground", _GROUND_W)
    gcol = pick(_GROUND, gi) * col(P.u("ground_bright", 0.8, 1.15))
    far = gcol * 0.8 + np.array([0.16, 0.17, 0.19], dtype=F32)  # haze of a fixed colour, not the sky's
    d_ground = bound - y
    gt = sat((y - horizon) / 0.6)
    gshade = far + gt[..., None] * (gcol - far)
    grain = 1.0 + 0.05 * np.sin(x * 57.0 + y * 13.0) * np.sin(y * 91.0)
    cv.paint(d_ground, gshade * grain[..., None], GROUND)

    # ---- car placement: u points to the car's front, v up is negative
    ctype = P.choice("body_type", _TYPE_W)
    T = _TYPE[ctype]  # [N, 7]
    sc = P.u("car_scale", 0.95, 1.18)
    facing = np.where(P.flag("facing_left", 0.5) > 0, F32(-1.0), F32(1.0))
    ground_y = np.minimum(horizon + P.u("car_depth", 0.35, 0.6), F32(0.8))
    cxp = P.u("car_x", -0.08, 0.08)

    def tp(i, lo, hi, name):
        return T[:, i][:, None, None] * P.u(name, lo, hi) * sc

    L = tp(0, 0.93, 1.07, "length")
    hb = tp(1, 0.88, 1.15, "body_height")
    hr = tp(2, 0.85, 1.15, "roof_height")
    R = P.u("wheel_size", 0.14, 0.195) * sc                  # wheels group
    ride = P.u("ride_height", 0.075, 0.11) * sc               # global: body clearance above the ground
    well_r = F32(0.215) * sc                                    # global: arch radius (fits every wheel)
    fr = T[:, 3:7][:, :, None, None] * P.u("cabin_shift", 0.92, 1.08)[:, None]
    fr = fr + P.u("cabin_offset", -0.05, 0.05)[:, None]

    # road under the car (asphalt only when the ground is not already grey)
    road_on = P.flag("road", 0.6)
    road_top = ground_y - P.u("road_far", 0.06, 0.14)
    road_bot = ground_y + P.u("road_near", 0.08, 0.2)
    d_road = np.maximum(road_top - y, y - road_bot) + (1.0 - road_on) * 10.0
    road_c = np.array([0.28, 0.28, 0.30], dtype=F32) * col(P.u("road_bright", 0.8, 1.25))
    cv.paint(np.maximum(d_road, d_ground), road_c, GROUND)
    dash = sat(np.sin((x * facing) * 9.0 + P.u("dash_phase", 0, 6.3)) * 3.0)
    lane_y = (road_top + road_bot) * 0.5 + 0.03
    d_lane = np.maximum(np.abs(y - lane_y) - 0.008, d_road)
    cv.paint(d_lane, np.array([0.93, 0.9, 0.75], dtype=F32), GROUND, opacity=dash)

    u = (x - cxp) * facing       # [N,1,S]
    v = y - ground_y             # [N,S,1]

    # shadow on the ground
    d_sh = ellipse(u, v, 0.8 * sc, 0.035 * sc)   # global: not the body's length
    cv.paint(d_sh, np.zeros(3, dtype=F32), None, opacity=0.55, soft=6.0)

    # ---- body: lower box + cabin trapezoid
    clear = ride
    body_bot = -clear
    body_top = -(clear + hb)
    d_low = box(u, v - (body_bot + body_top) * 0.5, L, hb * 0.5, hb * 0.42)
    roof = body_top - hr
    ws_base, roof_f, roof_r, rear_base = (fr[:, i] * L for i in range(4))
    d_cab = np.maximum(v - (body_top + 0.02 * sc), roof - v)
    d_cab = np.maximum(d_cab, _halfplane_edge(u, v, ws_base, body_top, roof_f, roof, True))
    d_cab = np.maximum(d_cab, _halfplane_edge(u, v, rear_base, body_top, roof_r, roof, False))
    d_body = smin(d_low, d_cab - 0.015 * sc, 0.06 * sc)
    paint_c = pick(_PAINT, P.choice("paint", _PAINT_W)) * col(P.u("paint_bright", 0.85, 1.1))
    vn = (v - roof) / (-roof)    # 0 at the roof, 1 at the ground
    belt = body_top + 0.035 * sc
    spec = 0.35 / (1.0 + ((v - belt) / (0.02 * sc)) ** 2)
    bshade = 1.2 - 0.5 * vn + spec
    cv.paint(d_body, paint_c * bshade[..., None] + spec[..., None] * 0.15, BODY)

    # windows (part of the body), split by a B-pillar
    m = 0.025 * sc
    bpil = P.u("pillar_pos", -0.25, 0.0) * L
    d_win = np.maximum(d_cab + m, v - (body_top - 0.005 * sc))
    d_win = np.maximum(d_win, 0.013 * sc - np.abs(u - bpil))
    glass = np.array([0.16, 0.2, 0.26], dtype=F32) * col(P.u("glass_tint", 0.7, 1.4))
    refl = sat(np.sin((u * 0.8 - v) * 9.0 / sc + P.u("reflect_phase", 0, 6.3)) * 2.0) * 0.25
    cv.paint(d_win, glass + refl[..., None], BODY)

    # door line, lights
    d_door = np.maximum(np.abs(u - bpil) - 0.006 * sc, np.maximum(d_low + 0.02 * sc, v - (body_bot - 0.03 * sc)))
    cv.paint(d_door, paint_c * 0.45, BODY, opacity=0.8)
    d_head = np.maximum(ellipse(u - L * 0.93, v - (body_top + hb * 0.3), 0.06 * sc, 0.03 * sc), d_low + 0.004)
    cv.paint(d_head, np.array([1.0, 0.95, 0.75], dtype=F32), BODY)
    d_tail = np.maximum(ellipse(u + L * 0.96, v - (body_top + hb * 0.3), 0.05 * sc, 0.03 * sc), d_low + 0.004)
    cv.paint(d_tail, np.array([0.85, 0.08, 0.08], dtype=F32), BODY)

    # ---- wheels with dark wheel wells
    wb = P.u("wheelbase", 0.43, 0.5) * sc                     # global: not the body's length
    uw = np.abs(u - P.u("wheel_shift", -0.03, 0.03) * sc) - wb
    vw = v + R
    d_well = np.maximum(circle(uw, v + F32(0.17) * sc, well_r), d_body)
    cv.paint(d_well, paint_c * 0.15 + 0.03, BODY)
    dr = np.sqrt(uw * uw + vw * vw)
    d_tyre = dr - R
    tshade = 0.09 + 0.08 * sat((dr / R - 0.75) * 4.0) * sat(-vw / R + 0.5)
    tshade = tshade + P.u("tyre_wall", 0.0, 0.08) * sat((dr / R - 0.62) * 8.0) * sat((0.9 - dr / R) * 8.0)
    cv.paint(d_tyre, np.broadcast_to(tshade[..., None], tshade.shape + (3,)), WHEELS)
    rim_r = R * P.u("rim_ratio", 0.55, 0.72)
    rim_c = pick(_RIM, P.choice("rim_color", _RIM_W))
    spokes = P.choice("spokes", [0.3, 0.3, 0.25, 0.15]) + 4  # 4..7 spokes
    ang = np.arctan2(vw, uw)
    sp = np.cos(ang * spokes[:, None, None].astype(F32) + P.u("wheel_angle", 0, 6.3))
    sp_w = P.u("spoke_width", 0.2, 0.7)
    spoke = sat((sp - (1.0 - 2.0 * sp_w)) * 6.0)
    disc = P.flag("disc_rim", 0.2)
    spoke = np.maximum(spoke, disc)
    rshade = 0.35 + 0.65 * spoke
    rshade = rshade * (1.0 + 0.25 * sat(-vw / R))
    cv.paint(dr - rim_r, rim_c * rshade[..., None], WHEELS)
    cv.paint(dr - rim_r * 0.25, rim_c * 0.6, WHEELS)

    return cv.to_uint8(), cv.lab, P.params
