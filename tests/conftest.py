from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from builders import wine_rows
from streamserve.demo.wine import wine_data_dir
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings


@pytest.fixture(scope="session")
def wine_dir() -> Iterator[Path]:
    with wine_data_dir() as path:
        yield path


@pytest.fixture(scope="session")
def wine_matrix(wine_dir: Path) -> np.ndarray:
    return wine_rows(wine_dir)


@pytest.fixture
def core(wine_dir: Path, tmp_path: Path) -> Iterator[ServingCore]:
    serving_core = ServingCore(ServingSettings(model_roots=[wine_dir, tmp_path]))
    yield serving_core
    serving_core.close()
