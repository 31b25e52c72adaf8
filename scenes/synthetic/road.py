"""The road: a chain of straight and constant-curvature segments, evaluated in closed form.

Road coordinates: `s` is arc length along the centre line (metres), `d` the signed
lateral offset, positive to the left of the driving direction. The road lies on the
ground plane z = 0 of the world frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_STRAIGHT = 1e-9


@dataclass(frozen=True)
class Road:
    """Centre line as segments of (length, curvature), starting at `s_start` at the origin
    heading along +x."""

    segments: tuple[tuple[float, float], ...]
    """(length m, curvature 1/m) per segment; positive curvature turns left."""
    s_start: float
    """Arc length at the first segment's start (the world origin)."""
    half_width: float = 5.0
    """Half width of the paved surface, metres (two lanes plus parking strips)."""
    lane_width: float = 3.5
    """Width of one driving lane; lane centres sit at d = +-lane_width / 2."""

    def __post_init__(self) -> None:
        x, y, heading, s = 0.0, 0.0, 0.0, self.s_start
        starts = []
        for length, curvature in self.segments:
            starts.append((s, x, y, heading, curvature))
            (x,), (y,), (heading,) = _advance(
                np.array([x]), np.array([y]), np.array([heading]), np.array([length]),
                np.array([curvature]),
            )
            s += length
        object.__setattr__(self, "_starts", np.array(starts))

    @property
    def s_end(self) -> float:
        return self.s_start + sum(length for length, _ in self.segments)

    def centre(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre line at arc lengths s (N,): x (N,), y (N,), heading (N,) in world."""
        s = np.atleast_1d(np.asarray(s, dtype=np.float64))
        starts = self._starts
        idx = np.clip(np.searchsorted(starts[:, 0], s, side="right") - 1, 0, len(starts) - 1)
        seg = starts[idx]
        return _advance(seg[:, 1], seg[:, 2], seg[:, 3], s - seg[:, 0], seg[:, 4])

    def pose(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y and heading of the point at road coordinates (s, d), arrays (N,)."""
        x, y, heading = self.centre(s)
        d = np.asarray(d, dtype=np.float64)
        return x - d * np.sin(heading), y + d * np.cos(heading), heading

    def project(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (s (N,), d (N,)) of world points xy (N, 2): the nearest centre
        line point, exact for every segment type."""
        xy = np.asarray(xy, dtype=np.float64)
        best_dist = np.full(len(xy), np.inf)
        best_s = np.zeros(len(xy))
        best_d = np.zeros(len(xy))
        lengths = [length for length, _ in self.segments]
        for (s0, x0, y0, h0, k), length in zip(self._starts, lengths, strict=True):
            first, last = s0 == self.s_start, s0 + length >= self.s_end
            px, py = xy[:, 0] - x0, xy[:, 1] - y0
            if abs(k) < _STRAIGHT:
                u = px * np.cos(h0) + py * np.sin(h0)
            else:
                # Angle swept from the segment start around the arc centre.
                cx, cy = -np.sin(h0) / k, np.cos(h0) / k
                ang0 = np.arctan2(-cy, -cx)
                ang = np.arctan2(py - cy, px - cx)
                sweep = np.sign(k) * (ang - ang0)
                sweep = (sweep + np.pi) % (2 * np.pi) - np.pi
                u = sweep / abs(k)
            lo = -np.inf if first else 0.0
            hi = np.inf if last else length
            u = np.clip(u, lo, hi)
            qx, qy, qh = _advance(np.full_like(u, x0), np.full_like(u, y0), np.full_like(u, h0),
                                  u, np.full_like(u, k))
            dx, dy = xy[:, 0] - qx, xy[:, 1] - qy
            dist = np.hypot(dx, dy)
            better = dist < best_dist
            best_dist = np.where(better, dist, best_dist)
            best_s = np.where(better, s0 + u, best_s)
            best_d = np.where(better, -dx * np.sin(qh) + dy * np.cos(qh), best_d)
        return best_s, best_d

    def to_json(self) -> dict:
        return {"segments": [list(s) for s in self.segments], "s_start": self.s_start,
                "half_width": self.half_width, "lane_width": self.lane_width}

    @staticmethod
    def from_json(data: dict) -> Road:
        return Road(tuple((float(a), float(b)) for a, b in data["segments"]),
                    float(data["s_start"]), float(data["half_width"]), float(data["lane_width"]))


def _advance(x, y, heading, ds, curvature):
    """State after travelling ds along a segment of constant curvature; arrays (N,)."""
    straight = np.abs(curvature) < _STRAIGHT
    k = np.where(straight, 1.0, curvature)
    new_heading = heading + curvature * ds
    arc_x = x + (np.sin(heading + k * ds) - np.sin(heading)) / k
    arc_y = y + (np.cos(heading) - np.cos(heading + k * ds)) / k
    line_x = x + ds * np.cos(heading)
    line_y = y + ds * np.sin(heading)
    return np.where(straight, line_x, arc_x), np.where(straight, line_y, arc_y), new_heading
