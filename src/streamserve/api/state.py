"""The serving state as JSON documents: keys (a page at a time), their models and statistics,
rejections."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from streamserve.api.history import ServingHistory
from streamserve.errors import InvalidRequestError
from streamserve.serving.core import ServingCore
from streamserve.serving.slot import ModelRole, ModelSlot, ServedModel

DEFAULT_KEYS_PAGE = 100


def served_document(served: ServedModel | None) -> dict[str, Any] | None:
    if served is None:
        return None
    stats = served.stats.snapshot()
    return {
        **asdict(stats),
        "average_duration_s": stats.average_duration_s,
        "load_duration_s": served.load_duration_s,
        "input_names": list(served.inputs.names or []),
        "input_width": served.inputs.width,
        "value_type": str(served.value_type),
        "live": served.live,
        "reloads": served.reloads,
    }


def slot_document(slot: ModelSlot) -> dict[str, Any]:
    return {
        "key": slot.key,
        "pinned": slot.pinned,
        "value_type": None if slot.value_type is None else str(slot.value_type),
        "positional_order": None if slot.positional_order is None else list(slot.positional_order),
        **{str(role): served_document(served) for role, served in _roles(slot)},
        "served_before": [asdict(stats) for stats in slot.served_history()],
        "rejected_total": slot.rejected_total,
        "quarantined_total": slot.quarantined_total,
        "recent_rejections": [asdict(rejection) for rejection in slot.rejections],
    }


KEY_SORTS = ("key", "records", "errors")
MAX_FILTER_CHARS = 256


@dataclass(frozen=True)
class KeysQuery:
    """A page of ``/keys``: which keys (``prefix``; ``q``, a case-insensitive substring), in
    which order (``sort``: by key, or most records or errors first), and where the page starts
    (``offset`` into the order, or for key order ``after`` a key)."""

    limit: int
    offset: int = 0
    after: str | None = None
    prefix: str = ""
    q: str = ""
    sort: str = "key"

    @classmethod
    def parse(cls, params: Mapping[str, str], default_limit: int, max_limit: int) -> KeysQuery:
        """The query of ``params`` (others are ignored); raises :class:`InvalidRequestError`
        saying which parameter is wrong and what it may be."""
        sort = params.get("sort", "key")
        if sort not in KEY_SORTS:
            raise InvalidRequestError(f"sort must be one of {', '.join(KEY_SORTS)}, not {sort!r}")
        after = params.get("after")
        if after is not None and (sort != "key" or "offset" in params):
            raise InvalidRequestError("after pages in key order: give it without sort and offset")
        return cls(
            limit=int_param(params, "limit", default_limit, 1, max_limit),
            offset=int_param(params, "offset", 0, 0, None),
            after=after,
            prefix=text_param(params, "prefix"),
            q=text_param(params, "q"),
            sort=sort,
        )

    def matches(self, key: str) -> bool:
        return key.startswith(self.prefix) and self.q.casefold() in key.casefold()


def keys_document(
    core: ServingCore,
    query: KeysQuery | None = None,
    ranked: Callable[[str], list[str]] | None = None,
) -> dict[str, Any]:
    """One page of keys with their models and statistics (default: the first
    ``DEFAULT_KEYS_PAGE`` in key order), the core's totals, and how to ask for the next page.

    ``ranked(sort)`` orders the keys by records or errors (the dashboard history's totals);
    keys it does not know yet follow in key order."""
    query = query or KeysQuery(limit=DEFAULT_KEYS_PAGE)
    slots = {slot.key: slot for slot in core.slots()}
    order = _ordered(slots, query.sort, ranked)
    matching = [key for key in order if query.matches(key)]
    start = bisect_right(matching, query.after) if query.after is not None else query.offset
    page = matching[start : start + query.limit]
    more = start + len(page) < len(matching)
    return {
        "keys": [slot_document(slots[key]) for key in page],
        "total": len(matching),
        "offset": start,
        "limit": query.limit,
        "next_offset": start + len(page) if more else None,
        "next_after": page[-1] if more and query.sort == "key" and page else None,
        "counts": core.counts,
        "loads_pending": core.loads_pending,
        "footprint": core.footprint(),
    }


class KeyPages:
    """The pages of ``/keys`` over one core: ``page_size`` keys unless a request asks for up to
    ``max_page_size``; orders by records or errors come from ``history``'s latest sample (the
    history thread's, or taken now if no thread samples)."""

    def __init__(
        self,
        core: ServingCore,
        *,
        page_size: int = DEFAULT_KEYS_PAGE,
        max_page_size: int = 1000,
        history: ServingHistory | None = None,
    ) -> None:
        self._core = core
        self._page_size = page_size
        self._max_page_size = max(page_size, max_page_size)
        self._history = history

    def document(self, params: Mapping[str, str]) -> dict[str, Any]:
        query = KeysQuery.parse(params, self._page_size, self._max_page_size)
        history = self._history
        if query.sort == "key" or history is None:
            return keys_document(self._core, query)
        history.refresh()
        return keys_document(self._core, query, history.activity.ranked)


def _ordered(
    slots: Mapping[str, ModelSlot], sort: str, ranked: Callable[[str], list[str]] | None
) -> list[str]:
    if sort == "key" or ranked is None:
        return sorted(slots)
    order = [key for key in ranked(sort) if key in slots]
    known = set(order)
    return order + sorted(key for key in slots if key not in known)


# The largest whole-number parameter: answers echo them, and a JSON number beyond 64 bits is
# neither portable nor serialized (orjson refuses it).
MAX_WHOLE_NUMBER = 2**63 - 1
WHOLE_NUMBER = re.compile(r"-?[0-9]{1,4000}")  # int() reads 4,300 digits at most


def int_param(
    params: Mapping[str, str], name: str, default: int, least: int, most: int | None
) -> int:
    """The whole number ``params[name]`` (``default`` if absent), from ``least`` to ``most``;
    raises :class:`InvalidRequestError` otherwise."""
    text = params.get(name)
    if text is None:
        return default
    # int() would also read other scripts' digits, "_", "+" and spaces: not an integer of a URL
    value = int(text) if WHOLE_NUMBER.fullmatch(text) else least - 1
    if value < least or (most is not None and value > most):
        bound = f"from {least} to {most}" if most is not None else f"{least} or more"
        raise InvalidRequestError(f"{name} must be a whole number {bound}, not {text!r}")
    if value > MAX_WHOLE_NUMBER:
        raise InvalidRequestError(f"{name} must be at most {MAX_WHOLE_NUMBER}, not {text!r}")
    return value


def text_param(params: Mapping[str, str], name: str) -> str:
    """The text ``params[name]`` (empty if absent), of ``MAX_FILTER_CHARS`` at most."""
    text = params.get(name, "")
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidRequestError(f"{name} may hold {MAX_FILTER_CHARS} characters at most")
    return text


def models_document(core: ServingCore) -> dict[str, Any]:
    """Every model the server holds, one entry per key and role."""
    models = []
    for slot in sorted(core.slots(), key=lambda s: s.key):
        for role, served in slot.models():
            identity = served.identity
            models.append(
                {
                    "key": slot.key,
                    "role": str(role),
                    "name": identity.name,
                    "version": identity.version,
                    "model_type": identity.model_type,
                    "description": identity.description,
                }
            )
    return {"models": models}


def _roles(slot: ModelSlot) -> list[tuple[ModelRole, ServedModel | None]]:
    """Every role, with the model holding it or ``None``."""
    held = dict(slot.models())
    return [(role, held.get(role)) for role in ModelRole]
