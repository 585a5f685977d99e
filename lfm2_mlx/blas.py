"""A fast BLAS for MLX's CPU backend on Linux, loaded before MLX is.

MLX's Linux CPU wheel (`mlx[cpu]`) links the reference BLAS it bundles, about 30-130x slower for
the float32 GEMMs a decode step is made of than OpenBLAS. Loading an OpenBLAS with
`RTLD_GLOBAL` before `mlx.core` is imported makes MLX's `cblas_*` calls resolve to it, exactly as
`LD_PRELOAD` would (measured in docs/bench.md). `lfm2_mlx/__init__.py` calls `preload()` first
thing, so importing anything from lfm2_mlx before MLX is enough; the CLI always does.

Where the library comes from, first found:
1. `LFM2_AUDIO_OPENBLAS=/path/to/libopenblas.so` (any unprefixed OpenBLAS build);
2. the system's OpenBLAS (Debian/Ubuntu `libopenblas0-pthread`, Fedora `openblas`);
3. the `ngsolve-openblas` wheel, a Linux dependency of this package: an unprefixed OpenBLAS whose
   only missing piece is `libgfortran.so.5`, found through its `$ORIGIN` run path. MLX's wheel
   ships that runtime under a hashed name, so a folder of symbolic links in the user's cache
   (`~/.cache/lfm2-mlx/openblas`) gives it the name the loader looks for; nothing is copied.

`LFM2_AUDIO_OPENBLAS=0` turns all of this off. macOS is left alone (Metal and Accelerate).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import sys
from pathlib import Path

ENV = "LFM2_AUDIO_OPENBLAS"
_SYSTEM = (  # Debian/Ubuntu libopenblas0-pthread, Fedora openblas
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

# What preload() did: {"library": path or None, "source": ..., "reason": why not, if not}.
state: dict = {"library": None, "source": None, "reason": "not attempted"}


def _package_dir(name: str) -> Path | None:
    """Where an installed module lives, without running it: ngsolve_openblas's __init__ would try
    (and, without libgfortran on the system, fail noisily) to load its library itself."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "namespace"):
        return None
    return Path(spec.origin).parent


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lfm2-mlx" / "openblas"


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic: two processes starting at once both end with a valid link


def _wheel_openblas() -> Path | None:
    """A folder of links: the wheel's OpenBLAS and the gfortran runtime (with its own hashed
    dependencies) under the names the dynamic loader resolves through `$ORIGIN`."""
    pkg = _package_dir("ngsolve_openblas")
    libs = sorted(pkg.glob("libopenblas*.so*")) if pkg else []
    if not libs:
        return None
    runtime = []
    for module, owner in (("mlx.core", "mlx"), ("numpy", "numpy")):
        # Both wheels ship libgfortran (and libquadmath) in site-packages/<wheel>.libs.
        d = _package_dir(module)
        if d is not None:
            runtime = sorted(glob.glob(str(d.parent / f"{owner}*.libs" / "lib*.so*")))
            if any("libgfortran" in Path(f).name for f in runtime):
                break
    gfortran = [Path(f) for f in runtime if Path(f).name.startswith("libgfortran")]
    if not gfortran:
        return None
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for f in runtime:
        _link(Path(f), folder / Path(f).name)
    _link(gfortran[0], folder / "libgfortran.so.5")
    _link(libs[0], folder / "libopenblas.so")
    return folder / "libopenblas.so"


_OFF = ("0", "off", "no", "false")


def _candidates():
    choice = os.environ.get(ENV, "").strip()
    if choice.lower() in _OFF:
        return
    if choice:
        yield choice, ENV
        return
    found = ctypes.util.find_library("openblas")
    if found:
        yield found, "system"
    for path in _SYSTEM:
        if os.path.exists(path):
            yield path, "system"
    try:
        wheel = _wheel_openblas()
    except OSError as e:  # a read-only home: say why and stay on MLX's own BLAS
        state["reason"] = f"cannot prepare {_cache_dir()}: {e.strerror or e}"
        return
    if wheel is not None:
        yield str(wheel), "ngsolve-openblas wheel"


def find() -> str | None:
    """The OpenBLAS `preload` would load (for tools that preload it into other programs)."""
    return next((path for path, _ in _candidates()), None)


def preload() -> dict:
    """Load an OpenBLAS globally if this is Linux, MLX is not imported yet and the user did not
    opt out. Never raises; returns (and keeps in `state`) what happened."""
    if state["reason"] != "not attempted" or state["library"]:
        return state
    if not sys.platform.startswith("linux"):
        state["reason"] = "not Linux (MLX uses Accelerate / Metal)"
        return state
    if os.environ.get(ENV, "").strip().lower() in _OFF:
        state["reason"] = f"turned off by {ENV}"
        return state
    if "mlx.core" in sys.modules:
        state["reason"] = "mlx was imported before lfm2_mlx; import lfm2_mlx first for OpenBLAS"
        return state
    state["reason"] = "no OpenBLAS found"
    for path, source in _candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            state["reason"] = f"cannot load {path}: {e}"
            continue
        state.update(library=path, source=source, reason=None)
        break
    return state


def describe() -> str:
    """One line for `lfm2-audio --version`: which BLAS MLX's CPU backend uses."""
    if state["library"]:
        return f"OpenBLAS ({state['source']}: {state['library']})"
    if not sys.platform.startswith("linux"):
        return "Accelerate (macOS)" if sys.platform == "darwin" else "MLX's own"
    return f"MLX's bundled BLAS ({state['reason']})"
