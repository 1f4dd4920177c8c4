"""Extensions as outside packages ship them: modules plus an installed distribution's dist-info
whose ``entry_points.txt`` registers them in streamserve's entry-point groups.

A folder made by :func:`install_distribution` works as a site directory: on ``sys.path`` (or
``PYTHONPATH``) ``importlib.metadata`` finds its entry points, as it finds those of a
``pip install``-ed package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def install_distribution(
    site: Path,
    distribution: str,
    modules: Mapping[str, str],
    entry_points: Mapping[str, Mapping[str, str]],
) -> Path:
    """Writes ``modules`` (module name -> source; a dotted name makes a package) and the
    dist-info of ``distribution`` registering ``entry_points`` (group -> name -> ``module:attr``)
    into ``site``; returns ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        path = site.joinpath(*name.split("."))
        if "." in name:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
        path.with_suffix(".py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    sections = [
        "\n".join([f"[{group}]", *(f"{name} = {value}" for name, value in names.items())])
        for group, names in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n\n".join(sections) + "\n")
    return site


@contextmanager
def on_sys_path(site: Path) -> Iterator[Path]:
    """``site`` first on ``sys.path`` (its entry points found); after, its modules forgotten."""
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for module in [*site.glob("*.py"), *site.glob("*/__init__.py")]:
            name = module.stem if module.name != "__init__.py" else module.parent.name
            for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
                sys.modules.pop(loaded, None)
        importlib.invalidate_caches()
