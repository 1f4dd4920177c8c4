"""The serving state as JSON documents: keys, their models and statistics, rejections."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from streamserve.serving.core import ServingCore
from streamserve.serving.slot import ModelSlot, ServedModel


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
        "live": served.live,
        "reloads": served.reloads,
    }


def slot_document(slot: ModelSlot) -> dict[str, Any]:
    return {
        "key": slot.key,
        "pinned": slot.pinned,
        "current": served_document(slot.current),
        "staged": served_document(slot.staged),
        "previous": served_document(slot.previous),
        "served_before": [asdict(stats) for stats in slot.served_history()],
        "rejected_total": slot.rejected_total,
        "recent_rejections": [asdict(rejection) for rejection in slot.rejections],
    }


def keys_document(core: ServingCore) -> dict[str, Any]:
    return {
        "keys": [slot_document(slot) for slot in sorted(core.slots(), key=lambda s: s.key)],
        "counts": core.counts,
        "loads_pending": core.loads_pending,
    }


def models_document(core: ServingCore) -> dict[str, Any]:
    """Every model the server holds, one entry per key and role."""
    models = []
    for slot in sorted(core.slots(), key=lambda s: s.key):
        for role, served in (
            ("current", slot.current),
            ("staged", slot.staged),
            ("previous", slot.previous),
        ):
            if served is not None:
                identity = served.identity
                models.append(
                    {
                        "key": slot.key,
                        "role": role,
                        "name": identity.name,
                        "version": identity.version,
                        "model_type": identity.model_type,
                        "description": identity.description,
                    }
                )
    return {"models": models}
