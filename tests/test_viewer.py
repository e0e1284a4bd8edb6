"""The drag-to-rotate viewer (minissd/viewer.py) without a browser: frames equal the
package renderer's, mouse events move the camera, sliders when ipyevents is missing.
(tests/test_browser_widgets.py drags it in a real JupyterLab.)"""
import os

import numpy as np
import pytest
import torch

from minissd.data.cameras import intrinsics
from minissd.nerf.render import render_image
from minissd.ssd.model import ASSETS, Model
from minissd.viz import orbit_viewer

SMOKE = os.path.join(ASSETS, "models", "cars-single-stage-smoke-allv-200it-de43b840.pt")
pytestmark = pytest.mark.skipif(not os.path.exists(SMOKE), reason="shipped smoke model missing")


@pytest.fixture(scope="module")
def model():
    return Model.load(SMOKE)


def test_frame_equals_render_image_with_occupancy(model):
    v = orbit_viewer(model, model.codes[0], res=32, azimuth=40, elevation=25)
    ref = render_image(v.field, v.camera()[None], intrinsics(32), 32, 32, v.n_samples,
                       occupancy=v.occupancy)["rgb"][0]
    ref = (ref.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert v.frame.shape == (32, 32, 3) and v.frame.dtype == np.uint8
    assert np.abs(v.frame.astype(int) - ref).max() <= 1             # culling changes nothing
    assert (v.frame < 200).any() and (v.frame == 255).any()          # a car on white


def test_drag_rotates_and_wheel_zooms(model):
    v = orbit_viewer(model, model.codes[0], res=24, drag_res=16, azimuth=0, elevation=10,
                     controls="sliders")
    first = v.frame.copy()
    v.handle_event({"type": "mousemove", "relativeX": 50, "relativeY": 0, "buttons": 0})
    assert v.azimuth == 0 and np.array_equal(v.frame, first)        # hover without a press
    v.handle_event({"type": "mousedown", "relativeX": 100, "relativeY": 100, "buttons": 1})
    v.handle_event({"type": "mousemove", "relativeX": 150, "relativeY": 110, "buttons": 1})
    assert v.azimuth == pytest.approx(-50 * v.deg_per_px)
    assert v.elevation == pytest.approx(10 + 10 * v.deg_per_px)
    assert v.frame.shape == (16, 16, 3)                               # drag resolution
    v.handle_event({"type": "mousemove", "relativeX": 100, "relativeY": 1000, "buttons": 1})
    assert v.elevation == 85 and v.azimuth == pytest.approx(0)       # clamped, back to 0
    v.handle_event({"type": "mouseup", "relativeX": 100, "relativeY": 1000})
    assert v.frame.shape == (24, 24, 3)                               # full resolution again
    top = v.frame.copy()
    r = v.radius
    v.handle_event({"type": "wheel", "deltaY": 100})
    assert v.radius == pytest.approx(r * 1.1) and not np.array_equal(v.frame, top)


def test_slider_fallback_redraws(model):
    pytest.importorskip("ipywidgets")
    v = orbit_viewer(model, model.codes[0], res=16, controls="sliders")
    box = v.widget
    sliders = [w for w in box.children[1].children]
    before = v._image.value
    sliders[0].value = 120.0                                          # azimuth
    assert v.azimuth == 120.0 and v._image.value != before
    assert "azimuth 120" in v._label.value


def test_mouse_widget_uses_ipyevents(model):
    pytest.importorskip("ipyevents")
    v = orbit_viewer(model, model.codes[0], res=16, controls="mouse")
    box = v.widget
    assert v._events.source is v._image and "mousemove" in v._events.watched_events
    assert "minissd-orbit-viewer" in v._image._dom_classes and box.children[0] is v._image


def test_drag_resolution_adapts_to_the_frame_time(model):
    slow = orbit_viewer(model, model.codes[0], res=32, target_fps=1e6)   # every frame too slow
    fast = orbit_viewer(model, model.codes[0], res=32, target_fps=1e-6)  # every frame fast enough
    for v in (slow, fast):
        v.handle_event({"type": "mousedown", "relativeX": 0, "relativeY": 0, "buttons": 1})
        for i in range(1, 8):
            v.handle_event({"type": "mousemove", "relativeX": 4 * i, "relativeY": 0, "buttons": 1})
    assert slow.drag_res == 16 and slow.frame.shape[0] < 32          # shrank, down to the floor
    assert fast.drag_res == 32 and fast.frame.shape[0] == 32
    slow.handle_event({"type": "mouseup"})
    assert slow.frame.shape[0] == 32                                  # full resolution at rest
