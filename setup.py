"""Build hook: ship the small pretrained checkpoints inside the wheel.

The repository keeps them at the top level, in assets/models/ (*.pt + manifest.json),
next to the benchmark that trains them. A regular (non-editable) install copies whatever
is there at build time into the built package as minissd/assets/models/, where
`minissd.ssd.model.model_dirs()` looks first. Editable installs (pip install -e .) skip
the copy: they read the repository's assets/models/ directly. Everything else about the
package is declared in pyproject.toml.
"""
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_SRC = os.path.join(HERE, "assets", "models")
MODELS_DST = os.path.join("minissd", "assets", "models")      # inside the built package


def shipped_model_files(src=MODELS_SRC):
    """The files that go into the wheel: every *.pt checkpoint and the manifest."""
    files = sorted(glob.glob(os.path.join(src, "*.pt")))
    manifest = os.path.join(src, "manifest.json")
    return files + ([manifest] if os.path.isfile(manifest) else [])


class build_py_with_models(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dst = os.path.join(self.build_lib, MODELS_DST)
        shutil.rmtree(dst, ignore_errors=True)                  # no stale checkpoints
        files = shipped_model_files()
        if not files:
            print(f"warning: no checkpoints in {MODELS_SRC}: the package ships no models")
            return
        os.makedirs(dst)
        for f in files:
            shutil.copy2(f, dst)
        print(f"shipping {len(files)} model files from {MODELS_SRC} in {dst}")


setup(cmdclass={"build_py": build_py_with_models})
