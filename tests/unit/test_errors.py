"""The exception tree: one place, drawn in its module docstring, three disjoint families."""

from __future__ import annotations

import inspect
import re

import pytest

from streamserve import errors
from streamserve.errors import (
    DeliveryError,
    InfrastructureError,
    RejectedInput,
    RequestError,
    StreamserveError,
)

CLASSES = {
    name: cls
    for name, cls in vars(errors).items()
    if inspect.isclass(cls) and cls.__module__ == errors.__name__
}


def drawn_tree() -> dict[str, str | None]:
    """Each class of the docstring's drawing with the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^ {4}([│ ]*(?:[├└]── )?)([A-Z]\w+)\b", line)
        if match is None:
            continue
        depth = len(match.group(1)) // 4
        del path[depth:]
        parents[match.group(2)] = path[-1] if path else None
        path.append(match.group(2))
    return parents


def test_the_docstring_draws_every_class_under_its_parent() -> None:
    actual = {
        name: None if cls is StreamserveError else cls.__bases__[0].__name__
        for name, cls in CLASSES.items()
    }
    assert drawn_tree() == actual


def test_every_error_belongs_to_exactly_one_family() -> None:
    families = (RejectedInput, RequestError, InfrastructureError)
    for name, cls in CLASSES.items():
        assert issubclass(cls, StreamserveError), name
        if cls is not StreamserveError:
            assert sum(issubclass(cls, family) for family in families) == 1, name


def test_every_kind_is_its_own() -> None:
    kinds = [cls.kind for cls in CLASSES.values()]
    assert len(kinds) == len(set(kinds))


def test_a_delivery_error_stops_the_stream_and_carries_what_may_be_committed() -> None:
    committable = {("data", 0): 42}
    with pytest.raises(InfrastructureError, match="results: Message timed out") as failure:
        raise DeliveryError("results: Message timed out", committable)
    committable[("data", 1)] = 7  # the caller's mapping is not the error's
    assert failure.value.committable == {("data", 0): 42}
    assert failure.value.kind == "delivery_failed"
