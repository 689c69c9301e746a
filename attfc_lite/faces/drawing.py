"""Rendering stages 1 and 2: drawing the face (background, head, beard, eyes, nose, mouth, mole)
and the photo's nuisance (lighting, camera), as the `FaceWorld` methods of `_FaceDrawing` (lesson 00).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .canvas import _Canvas, _col, _Head, _paint, _sigmoid


class _FaceDrawing:
    """`FaceWorld`'s drawing stages (a base class of it): the face, then the nuisance of the photo."""

    # -- the face ---------------------------------------------------------------------
    @staticmethod
    def _draw_background(c: _Canvas, sp, colours) -> torch.Tensor:
        """A new canvas filled with the image's background colour and its vertical gradient."""
        bg = colours["bg"]
        return (bg[:, :, None, None] * (1 + _col(sp["bg_grad"]) * c.y).unsqueeze(1)).expand(
            c.n, 3, c.size, c.size).contiguous()

    @staticmethod
    def _draw_head(c: _Canvas, img, ip, colours) -> _Head:
        """Paint long hair, neck, ears, the face (with its jaw) and the hair on top; return the head's geometry."""
        x, y, px = c.x, c.y, c.px
        skin, hair = colours["skin"], colours["hair"]
        face_cx, face_cy = c.at(c.zero, 0.08), ip["face_cy"]
        rx, ry = ip["face_rx"] * (0.88 + 0.12 * c.cyaw), ip["face_ry"]

        # Long hair behind the head, neck, ears.
        long_hair = ((ip["hair_long"] > 0.6) & (ip["bald"] > 0.12)).float()
        if bool(long_hair.any()):
            back = c.ellipse(face_cx, face_cy + 0.12, rx * 1.22 * ip["hair_volume"], ry * 1.12)
            _paint(img, back * _col(long_hair), hair)
        _paint(img, c.ellipse(face_cx, face_cy + ry * 0.95, rx * 0.55, ry * 0.6), skin * 0.82)
        for side in (-1.0, 1.0):
            ear = c.ellipse(c.at(side * (ip["face_rx"] + 0.01)), face_cy + 0.02, ip["ear"] * 0.7, ip["ear"] * 1.4)
            _paint(img, ear * _col(1 - long_hair), skin * 0.9)
        # Face: the jaw narrows the lower half (a row-dependent width).
        below = torch.relu(y - _col(face_cy)) / _col(ry)
        width = _col(rx) * (1 - _col(ip["jaw"]) * below**2)
        k = _col(torch.minimum(rx, ry) / (2 * px))
        face = _sigmoid(k - k * ((x - _col(face_cx)) ** 2 / width**2 + ((y - _col(face_cy)) / _col(ry)) ** 2))
        _paint(img, face, skin)

        # Hair on top: the head ellipse above an identity-specific hairline.
        has_hair = (ip["bald"] > 0.12).float()
        hairline = _col(face_cy - ry * ip["hairline"]) + _col(ip["hair_curve"]) * (x - _col(face_cx)) ** 2
        top = c.ellipse(face_cx, face_cy - 0.04, rx * 1.06 * ip["hair_volume"], ry * 1.04)
        _paint(img, top * _sigmoid((hairline - y) / px) * _col(has_hair), hair)
        return _Head(face_cx, face_cy, face)

    @staticmethod
    def _draw_beard(c: _Canvas, img, ip, head: _Head, colours) -> None:
        """Paint a beard (some identities) over the face below the nose."""
        beard = (ip["beard"] > 0.75).float() * (0.55 + 0.45 * (ip["beard"] - 0.75) / 0.25)
        if bool(beard.any()):
            chin = _sigmoid((c.y - _col(c.at_y(head.cy + ip["nose_y"] + 0.12, 0.1))) / (2 * c.px))
            _paint(img, head.face * (chin * _col(beard)), colours["hair"] * 0.8)

    @staticmethod
    def _draw_eyes(c: _Canvas, img, ip, sp, head: _Head, colours) -> None:
        """Paint both eyebrows and eyes (openness, gaze and brow raise are expression) and any glasses."""
        x, y, px, n, cyaw = c.x, c.y, c.px, c.n, c.cyaw
        hair, dark = colours["hair"], colours["dark"]
        eye_y = c.at_y(head.cy + ip["eye_y"], 0.1)
        open_ = sp["eye_open"].clamp(max=1.0)
        glasses = (ip["glasses"] > 0.82).float()
        for side in (-1.0, 1.0):
            ex = c.at(side * ip["eye_dx"], 0.12)
            # Eyebrow: a thin ellipse, sheared by the identity's tilt.
            by = eye_y - ip["brow_gap"] - sp["brow_raise"]
            dxb = x - _col(ex + side * 0.01)
            yr = (y - _col(by)) - _col(side * ip["brow_tilt"]) * dxb
            kb = _col(ip["brow_thick"] / (2 * px))
            brow = _sigmoid(kb - kb * ((dxb / _col(ip["brow_len"] * cyaw)) ** 2 + (yr / _col(ip["brow_thick"])) ** 2))
            _paint(img, brow, hair * 0.7)
            # Eye white, then the iris and pupil clipped to it.
            ew, eh = ip["eye_w"] * cyaw, ip["eye_h"] * open_
            white = c.ellipse(ex, eye_y, ew, eh)
            _paint(img, white, torch.full((n, 3), 0.92, device=c.device))
            iris_x, ir = ex + sp["gaze_x"] * ew * 0.5, ip["eye_h"] * 0.95
            _paint(img, white * c.ellipse(iris_x, eye_y, ir, ir), colours["iris"])
            _paint(img, white * c.ellipse(iris_x, eye_y, ir * 0.45, ir * 0.45), dark)
            if bool(glasses.any()):
                gr = ip["eye_w"] * 1.35
                ring = c.ellipse(ex, eye_y, gr * cyaw, gr * 0.8) - c.ellipse(ex, eye_y, gr * cyaw * 0.82, gr * 0.62)
                _paint(img, ring.clamp(0, 1) * _col(glasses), dark)

    @staticmethod
    def _draw_nose(c: _Canvas, img, ip, head: _Head, colours) -> None:
        """Paint the nose: a shaded ridge and the nostrils."""
        skin = colours["skin"]
        nose_x, nose_y = c.at(c.zero, 0.22), c.at_y(head.cy + ip["nose_y"], 0.2)
        ridge = c.ellipse(nose_x, nose_y - ip["nose_len"] * 0.4, ip["nose_w"] * 0.6, ip["nose_len"] * 0.6)
        _paint(img, ridge * 0.45, skin * 0.72)
        _paint(img, c.ellipse(nose_x, nose_y, ip["nose_w"] * 1.2, ip["nose_w"] * 0.45) * 0.6, skin * 0.55)

    @staticmethod
    def _draw_mouth(c: _Canvas, img, ip, sp, head: _Head, colours) -> None:
        """Paint the mouth: a curved band; a smile bends it, an open mouth shows the dark inside."""
        x, y, px = c.x, c.y, c.px
        mx, my = c.at(c.zero, 0.15), c.at_y(head.cy + ip["mouth_y"], 0.1)
        mw = ip["mouth_w"] * c.cyaw
        bend = _col(my) - _col(sp["smile"] * 0.12) * (x - _col(mx)) ** 2 / _col(mw)
        thick = ip["lip"] * (1 + sp["mouth_open"] * 0.8)
        km = _col(thick / (2 * px))
        dxm = ((x - _col(mx)) / _col(mw)) ** 2
        _paint(img, _sigmoid(km - km * (dxm + ((y - bend) / _col(thick)) ** 2)), colours["lips"])
        inner_h = thick * sp["mouth_open"] * 0.6 + 1e-3
        ki = _col(inner_h / (2 * px))
        _paint(img, _sigmoid(ki - ki * (dxm / 0.64 + ((y - bend) / _col(inner_h)) ** 2)), colours["dark"] * 1.5)

    @staticmethod
    def _draw_mole(c: _Canvas, img, ip, head: _Head, colours) -> None:
        """Paint a mole (some identities) on the face."""
        mole = (ip["mole"] > 0.7).float()
        if bool(mole.any()):
            spot = c.ellipse(c.at(ip["mole_x"], 0.1), head.cy + ip["mole_y"], c.zero + 0.03, c.zero + 0.03)
            _paint(img, head.face * spot * _col(mole), colours["skin"] * 0.45)

    # -- nuisance of the photo --------------------------------------------------------
    @staticmethod
    def _apply_lighting(c: _Canvas, img, sp) -> torch.Tensor:
        """Lighting (a directional gradient), brightness, contrast and white balance, as one affine map."""
        light = _col(sp["brightness"]) + _col(sp["light"]) * (
            _col(torch.cos(sp["light_angle"])) * c.x + _col(torch.sin(sp["light_angle"])) * c.y
        )
        gain = torch.stack([sp["gain_r"], sp["gain_g"], sp["gain_b"]], 1)
        k = sp["contrast"][:, None] * gain
        return img * light.unsqueeze(1) * k[:, :, None, None] + ((0.5 - 0.5 * sp["contrast"])[:, None] * gain)[:, :, None, None]

    @staticmethod
    def _apply_camera(c: _Canvas, img, sp, grid: torch.Tensor) -> torch.Tensor:
        """Camera roll, scale and shift as one bilinear warp, sampled at the points `grid` [n, size] (see `_degrade_downscale`)."""
        n, size = c.n, c.size
        u, v = grid.view(n, 1, size), grid.view(n, size, 1)
        cr, sr = _col(torch.cos(sp["roll"])), _col(torch.sin(sp["roll"]))
        uu, vv = u - _col(sp["dx"]), v - _col(sp["dy"])
        gx = (cr * uu + sr * vv) / _col(sp["scale"])
        gy = (-sr * uu + cr * vv) / _col(sp["scale"])
        return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)
