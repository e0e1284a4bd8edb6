"""A drag-to-rotate view of one triplane NeRF inside JupyterLab, rendered in the kernel.

    viewer = orbit_viewer(model, code)        # model: ssd.model.Model or a TriplaneDecoder
    viewer                                     # drag: rotate, wheel: zoom

Every frame is the volume rendering of eq. (1) (render.py `render_image`) from a camera on
a sphere around the object, looking at its centre (OpenCV convention, z up, cameras.py):

    eye = r (cos(el) cos(az), cos(el) sin(az), sin(el)),    c2w = look_at(eye)

A horizontal drag of dx pixels turns the azimuth by -dx * `deg_per_px`, a vertical drag
tilts the elevation (clamped to +-85 degrees), the mouse wheel scales r by 1.1 per notch.
Frames use empty-space skipping (an occupancy grid built once, occupancy.py) and early
ray termination (rays whose transmittance fell below 1e-4 stop being evaluated), so a
64 x 64 frame of the laptop model renders in tens of milliseconds on a 2-core CPU
(benchmarks/bench_viewer.py prints frames per second). While the mouse button is down,
frames are rendered at `drag_res`; by default (drag_res=None) that adapts: the full
resolution while a frame takes under 1 / `target_fps` seconds, 3/4 of the previous
resolution (down to 16 px) after a slower frame, back up after fast ones. The full
resolution comes back when the button is released.

Mouse events come from `ipyevents` (an optional extra: pip install -e '.[viewer]') on an
`ipywidgets.Image`; without it the viewer shows two sliders (azimuth, elevation) and a
zoom slider instead. The first frame is drawn when the viewer is made, so a headless run
(nbval, a script) renders and shows one static frame and nothing waits for a mouse.
"""
from __future__ import annotations

import io
import math
import time

import numpy as np
import torch
from PIL import Image

from minissd.data.cameras import CAMERA_RADIUS, intrinsics, look_at, pixel_rays, ray_box, sphere_to_xyz
from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.render import render_rays
from minissd.nerf.triplane import make_field

MIN_RADIUS, MAX_RADIUS, MAX_ELEVATION = 1.6, 8.0, 85.0


def has_ipyevents() -> bool:
    import importlib.util
    return importlib.util.find_spec("ipyevents") is not None


class OrbitViewer:
    """Camera state (azimuth, elevation in degrees, radius) + the renderer of one code.

    `render(res)` -> (res, res, 3) uint8; `handle_event(event)` takes ipyevents' event
    dicts (type, relativeX, relativeY, buttons, deltaY) and re-renders; `widget` is the
    ipywidgets box to display (built on first use)."""

    def __init__(self, model_or_decoder, code: torch.Tensor, res: int = 64,
                 drag_res: int | None = None, target_fps: float = 10.0, display_px: int = 256,
                 n_samples: int | None = None,
                 azimuth: float = 30.0, elevation: float = 20.0, radius: float = CAMERA_RADIUS,
                 deg_per_px: float = 0.6, occ_res: int = 64, occ_threshold: float | None = None,
                 controls: str = "auto"):
        cfg = getattr(model_or_decoder, "cfg", None)
        decoder = getattr(model_or_decoder, "decoder", model_or_decoder)
        code = code[None] if code.dim() == 4 else code                   # (1, 3, C, R, R)
        dev = next(decoder.parameters()).device
        self.field = make_field(decoder, code.to(dev).float())
        self.n_samples = n_samples or (cfg.n_samples if cfg is not None else 48)
        thr = occ_threshold if occ_threshold is not None else (cfg.occ_threshold if cfg else 0.1)
        self.occupancy = OccupancyGrid.from_field(self.field, 1, occ_res, thr, device=dev,
                                                  generator=torch.Generator(dev).manual_seed(0))
        self.near_min = cfg.near_min if cfg is not None else 0.2
        self.box = occupied_box(self.occupancy)                          # (centre, half-size)
        self.res, self.fixed_drag_res, self.display_px = res, drag_res, display_px
        self.drag_res, self.target_fps = drag_res or res, target_fps
        self.azimuth, self.elevation, self.radius = float(azimuth), float(elevation), float(radius)
        self.deg_per_px = deg_per_px
        self.controls = ("mouse" if has_ipyevents() else "sliders") if controls == "auto" else controls
        self._drag = None                     # (x0, y0, azimuth0, elevation0) while dragging
        self._widget = self._events = self._image = self._label = None
        self.callbacks = []                   # fn(viewer) after every new frame (on_frame)
        self.frames = 0
        self.frame = self.render(self.res)    # the first frame, drawn now (headless-safe)

    # ------------------------------------------------------------------ rendering
    def camera(self) -> torch.Tensor:
        """c2w (4, 4) of the current azimuth / elevation / radius."""
        eye = sphere_to_xyz(self.radius, math.radians(self.azimuth), math.radians(self.elevation))
        return look_at(eye)

    @torch.no_grad()
    def render(self, res: int | None = None) -> np.ndarray:
        """One frame (res, res, 3) uint8 from the current camera: render_image's pixels
        (same samples, occupancy grid, early termination in segments of 16 samples), with
        the rays that miss the occupied cells' bounding box left white without marching."""
        res = res or self.res
        dev = self.field.x.device
        o, d = pixel_rays(self.camera().to(dev), intrinsics(res).to(dev), res, res)
        o, d = o.reshape(1, -1, 3), d.reshape(1, -1, 3)                 # (1, res^2, 3)
        centre, half = self.box
        _, _, hit = ray_box((o - centre) / half, d / half)               # the box as a unit cube
        rgb = torch.ones_like(o)                                         # white background
        keep = hit[0].nonzero()[:, 0]
        if len(keep):
            out = render_rays(self.field, o[:, keep], d[:, keep], self.n_samples,
                              near_min=self.near_min, occupancy=self.occupancy,
                              segments=math.ceil(self.n_samples / 16))
            rgb[:, keep] = out["rgb"]
        self.frames += 1
        return (rgb[0].reshape(res, res, 3).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def png(self, frame: np.ndarray) -> bytes:
        """PNG bytes of a frame scaled (nearest) to display_px pixels."""
        k = max(1, self.display_px // frame.shape[0])
        big = frame.repeat(k, axis=0).repeat(k, axis=1)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def redraw(self, res: int | None = None) -> None:
        self.frame = self.render(res)
        if self._image is not None:
            self._image.value = self.png(self.frame)
            self._label.value = self.caption()
        for fn in self.callbacks:
            fn(self)

    def on_frame(self, fn) -> None:
        """Call fn(viewer) after every new frame (e.g. to show the truth from its camera() method)."""
        self.callbacks.append(fn)

    def caption(self) -> str:
        return (f"azimuth {self.azimuth:.0f}°, elevation {self.elevation:.0f}°, "
                f"radius {self.radius:.2f}" + ("  (drag to rotate, wheel to zoom)"
                                               if self.controls == "mouse" else ""))

    # ------------------------------------------------------------------ mouse
    def handle_event(self, event: dict) -> None:
        """Update the camera from one ipyevents event dict and re-render."""
        kind = event.get("type")
        x, y = event.get("relativeX", 0), event.get("relativeY", 0)
        if kind == "mousedown":
            self._drag = (x, y, self.azimuth, self.elevation)
        elif kind == "mousemove" and self._drag is not None:
            if not event.get("buttons", 1) & 1:                          # released outside
                self._drag = None
                return self.redraw(self.res)
            x0, y0, az0, el0 = self._drag
            self.azimuth = (az0 - (x - x0) * self.deg_per_px + 180.0) % 360.0 - 180.0
            self.elevation = float(np.clip(el0 + (y - y0) * self.deg_per_px,
                                           -MAX_ELEVATION, MAX_ELEVATION))
            t0 = time.perf_counter()
            self.redraw(self.drag_res)
            self._adapt(time.perf_counter() - t0)
        elif kind in ("mouseup", "mouseleave") and self._drag is not None:
            self._drag = None
            self.redraw(self.res)
        elif kind == "wheel":
            step = 1.1 ** float(np.sign(event.get("deltaY", 0)))
            self.radius = float(np.clip(self.radius * step, MIN_RADIUS, MAX_RADIUS))
            self.redraw(self.res)

    def _adapt(self, seconds: float) -> None:
        """Adaptive drag resolution (drag_res=None): 3/4 after a frame slower than
        1/target_fps, x 4/3 (up to res) after one faster than half of that."""
        if self.fixed_drag_res is not None:
            return
        budget = 1.0 / self.target_fps
        if seconds > budget:
            self.drag_res = max(16, int(self.drag_res * 0.75))
        elif seconds < 0.5 * budget:
            self.drag_res = min(self.res, int(math.ceil(self.drag_res * 4 / 3)))

    # ------------------------------------------------------------------ widgets
    @property
    def widget(self):
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _build(self):
        import ipywidgets as widgets
        self._image = widgets.Image(value=self.png(self.frame), format="png",
                                    layout=widgets.Layout(width=f"{self.display_px}px",
                                                          height=f"{self.display_px}px"))
        self._image.add_class("minissd-orbit-viewer")
        self._label = widgets.Label(self.caption())
        if self.controls == "mouse":
            from ipyevents import Event
            self._events = Event(source=self._image, throttle_or_debounce="throttle", wait=50,
                                 watched_events=["mousedown", "mousemove", "mouseup",
                                                 "mouseleave", "wheel"],
                                 prevent_default_action=True)
            self._events.on_dom_event(self.handle_event)
            return widgets.VBox([self._image, self._label])
        az = widgets.FloatSlider(value=self.azimuth, min=-180, max=180, step=5, description="azimuth")
        el = widgets.FloatSlider(value=self.elevation, min=-MAX_ELEVATION, max=MAX_ELEVATION,
                                 step=5, description="elevation")
        zoom = widgets.FloatSlider(value=self.radius, min=MIN_RADIUS, max=MAX_RADIUS, step=0.1,
                                   description="radius")

        def on_change(_):
            self.azimuth, self.elevation, self.radius = az.value, el.value, zoom.value
            self.redraw(self.res)
        for s in (az, el, zoom):
            s.observe(on_change, names="value")
        return widgets.VBox([self._image, widgets.HBox([az, el]), zoom, self._label])

    def _ipython_display_(self):
        from IPython.display import Image as ShowImage, display
        try:
            display(self.widget)
        except ImportError:                                              # no ipywidgets
            display(ShowImage(self.png(self.frame)))


def occupied_box(occ: OccupancyGrid):
    """(centre (3,), half-size (3,)) of the bounding box of scene 0's occupied cells
    (the whole grid's box when none is occupied)."""
    g, b = occ.grid[0], occ.bound
    h = 2 * b / g.shape[0]
    ijk = g.nonzero().float()                                            # (n, 3)
    if len(ijk) == 0:
        return torch.zeros(3, device=g.device), torch.full((3,), b, device=g.device)
    lo, hi = -b + ijk.min(0).values * h, -b + (ijk.max(0).values + 1) * h
    return (lo + hi) / 2, (hi - lo) / 2


def orbit_viewer(model_or_decoder, code: torch.Tensor, **kwargs) -> OrbitViewer:
    """A drag-to-rotate viewer of code (3, C, R, R) under a Model or a TriplaneDecoder;
    display it (last expression of a cell). See OrbitViewer for the keyword arguments."""
    return OrbitViewer(model_or_decoder, code, **kwargs)
