"""Maps a batch's feature columns to a model's inputs: by name where the model names them.

Names match exactly, else after normalization (case-insensitive; spaces, ``-``, ``.`` and ``_``
alike), so the PMML field ``fixed acidity`` takes the WineRecord field ``fixed_acidity``.
Positional models take the batch's columns in codec order and need exactly their width.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from streamserve.errors import MissingFeaturesError
from streamserve.formats.base import FloatMatrix, InputSpec

_SEPARATORS = re.compile(r"[\s_\-.]+")


def normalize_name(name: str) -> str:
    return _SEPARATORS.sub("_", name.strip()).lower()


@dataclass(frozen=True)
class FeatureMapping:
    """Column indices into the batch, in model input order; ``missing`` names absent columns.

    ``alternatives``: for an input that several batch columns match (``beta`` and ``Beta``,
    carried by different records), the other columns, in order: a record lacking the first
    takes its value from the next, so whether a record scores never depends on its batch mates.
    """

    columns: npt.NDArray[np.intp]
    missing: tuple[str, ...]
    alternatives: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def used_columns(self) -> set[int]:
        """Every batch column that feeds an input."""
        used = set(self.columns.tolist())
        for _, others in self.alternatives:
            used.update(others)
        return used

    def gather(self, values: FloatMatrix) -> FloatMatrix:
        """The model's input matrix from the batch's ``values``."""
        features = values[:, self.columns]
        for position, others in self.alternatives:
            column = features[:, position]
            for other in others:
                gaps = np.isnan(column)
                if not gaps.any():
                    break
                column[gaps] = values[gaps, other]
        return features


@lru_cache(maxsize=4096)
def map_features(batch_names: tuple[str, ...], spec: InputSpec) -> FeatureMapping:
    """How to feed ``spec`` from a batch with ``batch_names``.

    Raises :class:`MissingFeaturesError` for a positional model of another width. A named model
    with absent columns gets a mapping whose ``missing`` lists them (its rows cannot be scored).
    """
    if spec.names is None:
        if len(batch_names) != spec.width:
            raise MissingFeaturesError(
                f"model takes {spec.width} positional features, records carry "
                f"{len(batch_names)} ({', '.join(batch_names) or 'none'})"
            )
        return FeatureMapping(np.arange(spec.width, dtype=np.intp), ())
    exact = {name: index for index, name in enumerate(batch_names)}
    loose: dict[str, list[int]] = {}
    for index, name in enumerate(batch_names):
        loose.setdefault(normalize_name(name), []).append(index)
    columns: list[int] = []
    missing: list[str] = []
    alternatives: list[tuple[int, tuple[int, ...]]] = []
    for position, name in enumerate(spec.names):
        candidates = loose.get(normalize_name(name), [])
        index = exact.get(name, candidates[0] if candidates else -1)
        columns.append(index)
        if index < 0:
            missing.append(name)
        others = tuple(candidate for candidate in candidates if candidate != index)
        if others:
            alternatives.append((position, others))
    return FeatureMapping(np.asarray(columns, dtype=np.intp), tuple(missing), tuple(alternatives))


def missing_features_error(names: tuple[str, ...]) -> MissingFeaturesError:
    return MissingFeaturesError(f"record lacks feature(s) the model needs: {', '.join(names)}")


def positional_order(
    orders: Mapping[tuple[str, ...], int], spec: InputSpec, key: str
) -> tuple[str, ...]:
    """The field order to feed a positional model from records that name their fields, given how
    many records carry each order: among the orders as long as the model is wide, the most
    common set of fields, in the order more than half of its records carry.

    JSON objects have no order of their own: only a clear majority is one. Raises
    :class:`MissingFeaturesError` when there is none (the records alone cannot say).
    """
    wide = {order: count for order, count in orders.items() if len(order) == spec.width}
    if not wide:
        longest = max(orders, key=len, default=())
        return longest  # of another width: the caller says so
    by_fields: Counter[frozenset[str]] = Counter()
    for order, count in wide.items():
        by_fields[frozenset(order)] += count
    (fields, voters), *others = by_fields.most_common(2)
    if others and others[0][1] == voters:
        raise MissingFeaturesError(
            f"the records of key {key!r} carry different sets of {spec.width} fields equally "
            f"often ({', '.join(sorted(fields))} and {', '.join(sorted(others[0][0]))}): no "
            "order to feed its positional model yet"
        )
    order, count = max(
        ((order, count) for order, count in wide.items() if frozenset(order) == fields),
        key=lambda item: item[1],
    )
    if 2 * count <= voters:
        raise MissingFeaturesError(
            f"the records of key {key!r} name their fields in differing orders, none carried "
            "by most of them: no order to feed its positional model yet. Send a 'features' "
            "list, records in one order, or a model that names its inputs"
        )
    return order
