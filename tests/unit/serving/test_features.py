from __future__ import annotations

import pytest

from streamserve.errors import MissingFeaturesError
from streamserve.formats.base import InputSpec
from streamserve.serving.features import map_features, normalize_name


def test_names_match_exactly_or_after_normalization() -> None:
    mapping = map_features(("fixed_acidity", "pH", "x"), InputSpec(2, ("pH", "fixed acidity")))
    assert mapping.columns.tolist() == [1, 0]
    assert mapping.missing == ()
    assert normalize_name(" Free-Sulfur.Dioxide ") == "free_sulfur_dioxide"


def test_absent_names_are_listed() -> None:
    mapping = map_features(("a",), InputSpec(2, ("a", "b")))
    assert mapping.missing == ("b",)


def test_positional_models_need_their_width() -> None:
    assert map_features(("a", "b"), InputSpec(2)).columns.tolist() == [0, 1]
    with pytest.raises(MissingFeaturesError, match="takes 3 positional features, records carry 2"):
        map_features(("a", "b"), InputSpec(3))
