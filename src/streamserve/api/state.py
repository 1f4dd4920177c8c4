"""The serving state as JSON documents: keys, their models and statistics, rejections."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from streamserve.serving.core import ServingCore
from streamserve.serving.slot import ModelRole, ModelSlot, ServedModel


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


def keys_document(core: ServingCore) -> dict[str, Any]:
    return {
        "keys": [slot_document(slot) for slot in sorted(core.slots(), key=lambda s: s.key)],
        "counts": core.counts,
        "loads_pending": core.loads_pending,
        "footprint": core.footprint(),
    }


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
