import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """Build (once per session) the Hugging Face layout folder of a committed manifest."""
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = checkpoints.build(checkpoints.load_manifest(name), tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="session")
def load_model(checkpoint_dir):
    """Loaded models by (fixture name, dtype), shared across tests."""
    import lfm2_mlx

    cache = {}

    def get(name: str, dtype: str = "float32"):
        if (name, dtype) not in cache:
            cache[name, dtype] = lfm2_mlx.load(checkpoint_dir(name), dtype=dtype)
        return cache[name, dtype]

    return get


@pytest.fixture
def no_load(monkeypatch):
    """`lfm2_mlx.load` replaced by a recorder that fails: a check that must come before any model
    work shows as the error, with no call recorded."""
    import lfm2_mlx

    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr(lfm2_mlx, "load", fake)
    return calls
