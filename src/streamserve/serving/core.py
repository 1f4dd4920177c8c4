"""ServingCore: the one transport-neutral façade that runtimes and the API call.

Runtimes hand it model messages and decoded batches; it owns the slots, the loader and the
event log. Scoring runs on the caller's thread (one scoring thread per core); loading runs on the
loader's threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamserve.codecs.base import DecodedBatch
from streamserve.descriptor import ModelDescriptor, decode_descriptor
from streamserve.errors import (
    DescriptorError,
    MissingFeaturesError,
    NoModelError,
    RejectedInput,
    ScoringError,
)
from streamserve.formats.base import FactoryContext, FloatMatrix, Model
from streamserve.formats.cache import ArtifactCache
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.budget import LiveModels
from streamserve.serving.events import EventLog, ModelEvent, ModelEventKind
from streamserve.serving.features import map_features, missing_features_error
from streamserve.serving.loader import LoadJob, ModelLoader
from streamserve.serving.outcome import BatchOutcome, RecordError, ScoredGroup
from streamserve.serving.slot import ModelSlot, ServedModel
from streamserve.settings import ServingSettings

# Upper bounds of the batch-size histogram; the last bucket takes every larger batch.
BATCH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 1 << 62)


class ServingCore:
    def __init__(self, settings: ServingSettings, registry: FactoryRegistry | None = None) -> None:
        self._settings = settings
        self._registry = registry or FactoryRegistry(
            FactoryContext(
                threads_per_model=settings.threads_per_model,
                sklearn_trusted_types=tuple(settings.sklearn_trusted_types),
                cache=(
                    ArtifactCache(settings.artifact_cache_dir, settings.artifact_cache_max_bytes)
                    if settings.artifact_cache_dir is not None
                    else None
                ),
            )
        )
        self._events = EventLog()
        self._slots: dict[str, ModelSlot] = {}
        self._unloaded_at: dict[str, int] = {}  # key -> the sequence number of its unloading
        self._slots_lock = threading.Lock()
        self._sequence = itertools.count()
        self.live_models = LiveModels(settings.max_live_models)
        self._loader = ModelLoader(
            self._registry,
            self._events,
            self.slot,
            model_roots=[Path(root) for root in settings.model_roots],
            threads=settings.loader_threads,
            live=self.live_models,
        )
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    # --- models --------------------------------------------------------------------------------
    def submit_model_message(self, payload: bytes, origin: str = "") -> ModelDescriptor | None:
        """Decodes a model message and loads it off-path; a bad message becomes a rejection."""
        try:
            descriptor = decode_descriptor(payload)
        except DescriptorError as err:
            self.reject_model_message(err, origin)
            return None
        self.submit_model(descriptor, origin)
        return descriptor

    def reject_model_message(self, error: RejectedInput, origin: str = "") -> None:
        """Reports a model message that never became a descriptor (undecodable, unreadable)."""
        self._count(model_messages_rejected=1)
        self._events.put(
            ModelEvent(
                ModelEventKind.REJECTED,
                key="",
                name="",
                reason=str(error),
                error_kind=error.kind,
                origin=origin,
            )
        )

    def submit_model(self, descriptor: ModelDescriptor, origin: str = "") -> None:
        self._count(model_messages=1)
        self._loader.submit(LoadJob(descriptor, next(self._sequence), origin))

    def wait_for_models(self, timeout_s: float | None = None) -> bool:
        """Waits until every submitted model is staged or rejected; False on timeout."""
        return self._loader.wait_idle(timeout_s)

    @property
    def loads_pending(self) -> int:
        return self._loader.pending

    def drain_events(self) -> list[ModelEvent]:
        return self._events.drain()

    # --- slots ---------------------------------------------------------------------------------
    def slot(self, key: str) -> ModelSlot:
        """The slot of ``key``, created on first use."""
        with self._slots_lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = ModelSlot(
                    key,
                    self._settings.max_rejections_kept,
                    floor=self._unloaded_at.get(key, -1),
                )
            return slot

    def slots(self) -> list[ModelSlot]:
        with self._slots_lock:
            return list(self._slots.values())

    def find_slot(self, key: str) -> ModelSlot | None:
        """The slot of ``key`` if it exists (never creates one)."""
        with self._slots_lock:
            return self._slots.get(key)

    def unload(self, key: str, origin: str = "") -> bool:
        """Forgets ``key`` and closes its models; its records get ``no_model`` errors after.

        Ordered with model messages: a model submitted before the unloading and still loading
        never comes back; one submitted after it serves the key again.
        """
        with self._slots_lock:
            self._unloaded_at[key] = next(self._sequence)
            slot = self._slots.pop(key, None)
        if slot is None:
            return False
        slot.close()
        self._events.put(ModelEvent(ModelEventKind.UNLOADED, key, "", origin=origin))
        return True

    # --- scoring -------------------------------------------------------------------------------
    def score(self, batch: DecodedBatch) -> BatchOutcome:
        """Scores a decoded batch: one result or one error for every record, none lost."""
        outcome = BatchOutcome(batch.records)
        for row, error in batch.errors.items():
            outcome.errors.append(RecordError(row, error.kind, str(error)))
        with_gaps = _keys_with_gaps(batch)
        for key, rows in _group_rows(batch.keys).items():
            self._score_key(key, rows, batch, outcome, complete=key not in with_gaps)
        kinds = Counter(f"errors.{error.kind}" for error in outcome.errors)
        bucket = BATCH_SIZE_BUCKETS[bisect_left(BATCH_SIZE_BUCKETS, len(batch))]
        size_bucket = f"batch_size_le.{bucket}"
        self._count(
            records=len(batch),
            results=outcome.result_count,
            errors=outcome.error_count,
            batches=1,
            **{size_bucket: 1},
            **kinds,
        )
        return outcome

    def _count(self, **increments: int) -> None:
        with self._counts_lock:
            self._counts.update(increments)

    @property
    def counts(self) -> dict[str, int]:
        """Totals so far: records, results, errors, ``errors.<kind>``, batches, model messages."""
        with self._counts_lock:
            return dict(self._counts)

    def _score_key(
        self,
        key: str,
        rows: npt.NDArray[np.intp],
        batch: DecodedBatch,
        outcome: BatchOutcome,
        *,
        complete: bool,
    ) -> None:
        """Scores one key's rows; ``complete`` when none of them lacks a value (no NaN)."""
        slot = self._slots.get(key)
        served, swapped = slot.model_for_batch() if slot is not None else (None, False)
        if complete:
            names, values = batch.feature_names, batch.values[rows]
        else:
            names, values = _columns_of(batch, rows)
        if slot is not None:
            slot.observe(names, values, self._settings.validation_rows)
        if served is None:
            _fail_rows(outcome, rows, _no_model(key, slot), key, None)
            return
        if swapped:
            identity = served.identity
            self._events.put(
                ModelEvent(
                    ModelEventKind.SWAPPED,
                    key,
                    identity.name,
                    identity.version,
                    load_duration_s=served.load_duration_s,
                )
            )
        try:
            mapping = map_features(names, served.inputs)
            if served.inputs.names is None and key in batch.unordered_keys:
                raise MissingFeaturesError(
                    f"model {served.identity.name!r} takes positional features, but the "
                    f"{key!r} records carry named fields in differing orders; send a "
                    "'features' list, or a model that names its inputs"
                )
        except MissingFeaturesError as err:
            self._fail(outcome, rows, err, key, served)
            return
        if mapping.missing:
            self._fail(outcome, rows, missing_features_error(mapping.missing), key, served)
            return
        features = values[:, mapping.columns]
        incomplete = None if complete else np.isnan(features).any(axis=1)
        if incomplete is not None and incomplete.any():
            model_names = served.inputs.names or tuple(names[i] for i in mapping.columns)
            self._fail_incomplete(
                outcome, rows[incomplete], features[incomplete], model_names, key, served
            )
            rows, features = rows[~incomplete], features[~incomplete]
        if len(rows):
            self._score_rows(rows, features, key, served, outcome)

    def _score_rows(
        self,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        key: str,
        served: ServedModel,
        outcome: BatchOutcome,
    ) -> None:
        started = time.perf_counter()
        try:
            with served.instance() as model:
                try:
                    scored = _checked_output(model.score_batch(features), len(rows))
                except Exception:  # noqa: BLE001 - isolate the failing records, one by one
                    rows, scored = self._score_one_by_one(
                        rows, features, key, served, model, outcome
                    )
        except ScoringError as err:  # the evicted instance could not be made again
            self._fail(outcome, rows, err, key, served)
            return
        self.live_models.touch(served)
        elapsed = time.perf_counter() - started
        if len(rows):
            served.stats.record_batch(len(rows), elapsed)
            outcome.groups.append(
                ScoredGroup(key, served.identity, rows, scored, elapsed / len(rows))
            )

    def _score_one_by_one(
        self,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        key: str,
        served: ServedModel,
        model: Model,
        outcome: BatchOutcome,
    ) -> tuple[npt.NDArray[np.intp], np.ndarray]:
        kept: list[int] = []
        values: list[np.ndarray] = []
        for position, row in enumerate(rows.tolist()):
            try:
                value = _checked_output(model.score_batch(features[position : position + 1]), 1)
            except Exception as err:  # noqa: BLE001 - any model failure is this record's error
                reason = f"model {served.identity.name!r} failed to score the record: {err}"
                self._fail(outcome, np.array([row]), ScoringError(reason), key, served)
                continue
            kept.append(row)
            values.append(value)
        scored = np.concatenate(values) if values else np.empty(0)
        return np.asarray(kept, dtype=np.intp), scored

    def _fail(
        self,
        outcome: BatchOutcome,
        rows: npt.NDArray[np.intp],
        error: RejectedInput,
        key: str,
        served: ServedModel,
    ) -> None:
        served.stats.record_errors(len(rows))
        _fail_rows(outcome, rows, error, key, served)

    def _fail_incomplete(
        self,
        outcome: BatchOutcome,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        names: tuple[str, ...],
        key: str,
        served: ServedModel,
    ) -> None:
        for row, missing in zip(rows.tolist(), np.isnan(features), strict=True):
            absent = tuple(name for name, gone in zip(names, missing, strict=True) if gone)
            self._fail(outcome, np.array([row]), missing_features_error(absent), key, served)

    def close(self) -> None:
        self._loader.close()
        for slot in self.slots():
            slot.close()


PUBLISHABLE_KINDS = frozenset("biufUS")


def _checked_output(output: object, rows: int) -> np.ndarray:
    """The model's output if it has one number, string or vector of numbers per row."""
    values = np.asarray(output)
    if values.ndim == 0 or len(values) != rows:
        raise ScoringError(
            f"model returned {values.size if values.ndim == 0 else len(values)} "
            f"outputs for {rows} records"
        )
    if values.dtype.kind == "O" and all(isinstance(v, str) for v in values.ravel().tolist()):
        return values
    if values.dtype.kind not in PUBLISHABLE_KINDS:
        raise ScoringError(f"model returned values of type {values.dtype}, not numbers or strings")
    return values


def _columns_of(
    batch: DecodedBatch, rows: npt.NDArray[np.intp]
) -> tuple[tuple[str, ...], FloatMatrix]:
    """The feature columns that the records at ``rows`` carry, and their values.

    A batch's columns are the union over all its records; a key's records may carry fewer (other
    keys have other schemas), and a positional model must see only its own records' columns.
    """
    values = batch.values[rows]
    present = np.asarray(~np.isnan(values).all(axis=0))
    if present.all():
        return batch.feature_names, values
    kept = present.tolist()
    names = tuple(name for name, keep in zip(batch.feature_names, kept, strict=True) if keep)
    return names, values[:, present]


def _keys_with_gaps(batch: DecodedBatch) -> set[str | None]:
    """The keys of the rows lacking a value: one vectorized pass, so that the common batch,
    complete, skips the per-key checks (thousands of keys make thousands of small groups)."""
    lacking = np.isnan(batch.values).any(axis=1)
    if not lacking.any():
        return set()
    return {batch.keys[row] for row in np.flatnonzero(lacking).tolist()}


def _group_rows(keys: Sequence[str | None]) -> dict[str, npt.NDArray[np.intp]]:
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        if key is not None:
            groups.setdefault(key, []).append(row)
    return {key: np.asarray(rows, dtype=np.intp) for key, rows in groups.items()}


def _no_model(key: str, slot: ModelSlot | None) -> NoModelError:
    rejections = slot.rejections if slot is not None else []
    if rejections:
        latest = rejections[-1]
        return NoModelError(
            f"no model for key {key!r}: {slot.rejected_total if slot else 0} "
            f"rejected, latest {latest.name!r}: {latest.reason}"
        )
    return NoModelError(f"no model for key {key!r} yet")


def _fail_rows(
    outcome: BatchOutcome,
    rows: npt.NDArray[np.intp],
    error: RejectedInput,
    key: str,
    served: ServedModel | None,
) -> None:
    identity = served.identity if served is not None else None
    reason = str(error)
    outcome.errors.extend(
        RecordError(row, error.kind, reason, key, identity) for row in rows.tolist()
    )
