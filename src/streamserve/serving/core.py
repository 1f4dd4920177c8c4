"""ServingCore: the one transport-neutral façade that runtimes and the API call.

Runtimes hand it model messages and decoded batches; it owns the slots, the loader and the
event log. Scoring runs on the callers' threads (the runtime's, and the API's for V2 requests,
possibly at once); loading runs on the loader's threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
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
from streamserve.formats.base import FactoryContext, FloatMatrix, InputSpec, Model
from streamserve.formats.cache import ArtifactCache
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.budget import LiveModels
from streamserve.serving.events import EventLog, ModelEvent, ModelEventKind
from streamserve.serving.features import (
    FeatureMapping,
    map_features,
    missing_features_error,
    positional_order,
)
from streamserve.serving.loader import LoadJob, ModelLoader
from streamserve.serving.outcome import BatchOutcome, RecordError, ScoredGroup
from streamserve.serving.output import PublishableOutput, publishable
from streamserve.serving.slot import ModelSlot, Rejection, ServedModel
from streamserve.settings import ServingSettings

# Upper bounds of the batch-size histogram; the last bucket takes every larger batch.
BATCH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 1 << 62)
MAX_KEYLESS_REJECTIONS = 1000
QUARANTINE_MIN_BATCHES = 3  # failing batches in a row, beside the records, before a quarantine


class ServingCore:
    """Serves every key's current model: takes model messages (loaded and validated off the
    scoring path), scores decoded batches (one result or error per record), and keeps the
    statistics, events and rejections that the API and the runtimes report.

    Use it as a context manager, or call :meth:`close`, to stop its loader and close its
    models.
    """

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
        # key -> the sequence number of its unloading; kept only while an older load is pending
        self._unloaded_at: dict[str, int] = {}
        # rejections of models for keys that have no slot: bounded, however many such keys
        self._keyless_rejections: deque[Rejection] = deque(maxlen=MAX_KEYLESS_REJECTIONS)
        self._loading: dict[str, set[int]] = {}  # key -> sequence numbers of its loads pending
        self._slots_lock = threading.Lock()
        self._sequence = itertools.count()
        self.live_models = LiveModels(settings.max_live_models)
        self._loader = ModelLoader(
            self._registry,
            self._events,
            self,
            model_roots=[Path(root) for root in settings.model_roots],
            threads=settings.loader_threads,
            live=self.live_models,
        )
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    def __enter__(self) -> ServingCore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        with self._slots_lock:  # sequence numbers in submission order, unloads included
            sequence = next(self._sequence)
            self._loading.setdefault(descriptor.data_type, set()).add(sequence)
        self._loader.submit(LoadJob(descriptor, sequence, origin))

    def load_done(self, key: str, sequence: int) -> None:
        """The loader finished (staged or rejected) the model of ``key`` submitted as
        ``sequence``. The key's unload floor goes once no load of the key older than it is left:
        floors exist only while they can matter, whatever keys tombstones name."""
        with self._slots_lock:
            pending = self._loading.get(key, set())
            pending.discard(sequence)
            if not pending:
                self._loading.pop(key, None)
            floor = self._unloaded_at.get(key)
            if floor is not None and min(pending, default=floor) >= floor:
                del self._unloaded_at[key]

    def wait_for_models(self, timeout_s: float | None = None) -> bool:
        """Waits until every submitted model is staged or rejected; False on timeout."""
        return self._loader.wait_idle(timeout_s)

    @property
    def loads_pending(self) -> int:
        return self._loader.pending

    def drain_events(self) -> list[ModelEvent]:
        return self._events.drain()

    # --- slots ---------------------------------------------------------------------------------
    def stage(self, key: str, served: ServedModel) -> bool:
        """Stages a loaded, validated model in its key's slot, made for it if need be; never
        makes a slot for a model that could not stage (the key was unloaded after it came)."""
        with self._slots_lock:
            slot = self._slots.get(key)
            if slot is None:
                if served.identity.sequence <= self._unloaded_at.get(key, -1):
                    return False
                slot = self._slots[key] = ModelSlot(
                    key, self._settings.max_rejections_kept, floor=self._unloaded_at.get(key, -1)
                )
        return slot.stage(served)

    def slots(self) -> list[ModelSlot]:
        with self._slots_lock:
            return list(self._slots.values())

    def find_slot(self, key: str) -> ModelSlot | None:
        """The slot of ``key`` if it exists (never creates one)."""
        with self._slots_lock:
            return self._slots.get(key)

    def reject(self, rejection: Rejection) -> None:
        """Keeps a rejected model's reason: in its key's slot, or among the keyless ones."""
        slot = self.find_slot(rejection.key)
        if slot is not None:
            slot.reject(rejection)
            return
        with self._slots_lock:
            self._keyless_rejections.append(rejection)

    def rejections_of(self, key: str) -> tuple[int, Rejection | None]:
        """How many models were rejected for ``key`` (as far as kept) and the latest."""
        slot = self.find_slot(key)
        if slot is not None:
            rejections = slot.rejections
            return slot.rejected_total, rejections[-1] if rejections else None
        with self._slots_lock:
            kept = [rejection for rejection in self._keyless_rejections if rejection.key == key]
        return len(kept), kept[-1] if kept else None

    def footprint(self) -> dict[str, int]:
        """The per-key state held: what must stay bounded, whatever keys the topics carry."""
        with self._slots_lock:
            return {
                "slots": len(self._slots),
                "unload_floors": len(self._unloaded_at),
                "keyless_rejections": len(self._keyless_rejections),
                "loading": sum(len(pending) for pending in self._loading.values()),
            }

    def unload(self, key: str, origin: str = "") -> bool:
        """Forgets ``key`` and closes its models; its records get ``no_model`` errors after.

        Ordered with model messages: a model submitted before the unloading and still loading
        never comes back; one submitted after it serves the key again.
        """
        with self._slots_lock:
            floor = next(self._sequence)
            if key in self._loading:  # only loads submitted before it and pending need a floor
                self._unloaded_at[key] = floor
            slot = self._slots.pop(key, None)
        if slot is None:
            return False
        slot.close()
        self._events.put(ModelEvent(ModelEventKind.UNLOADED, key, "", origin=origin))
        return True

    def _no_model(self, key: str, slot: ModelSlot | None) -> NoModelError:
        rejected, latest = self.rejections_of(key)
        if latest is not None:
            return NoModelError(
                f"no model for key {key!r}: {rejected} rejected, latest {latest.name!r}: "
                f"{latest.reason}"
            )
        return NoModelError(f"no model for key {key!r} yet")

    # --- scoring -------------------------------------------------------------------------------
    def score(self, batch: DecodedBatch, *, observe: bool = True) -> BatchOutcome:
        """Scores a decoded batch: one result or one error for every record, none lost.

        ``observe``: whether the records are the key's stream records, whose columns and rows
        validate its next models (V2 requests are not: they may be shaped otherwise).
        Nothing a model or a record does makes this raise: it becomes error records.
        """
        _check_shape(batch)
        outcome = BatchOutcome(batch.records)
        for row, error in batch.errors.items():
            outcome.errors.append(RecordError(row, error.kind, str(error)))
        with_gaps = _keys_with_gaps(batch)
        for key, rows in _group_rows(batch.keys).items():
            try:
                self._score_key(
                    key, rows, batch, outcome, complete=key not in with_gaps, observe=observe
                )
            except Exception as err:  # noqa: BLE001 - a defect must fail this key's rows only
                outcome.drop_rows(rows)
                reason = f"scoring the records of key {key!r} failed: {type(err).__name__}: {err}"
                _fail_rows(outcome, rows, ScoringError(reason), key, None)
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

    def count_internal_error(self) -> None:
        """Counts a record that failed in a way no step foresaw (the runtime's last resort)."""
        self._count(records=1, errors=1, **{"errors.internal_error": 1})

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
        observe: bool,
    ) -> None:
        """Scores one key's rows; ``complete`` when none of them lacks a value (no NaN)."""
        slot = self._slots.get(key)
        if slot is None:
            _fail_rows(outcome, rows, self._no_model(key, None), key, None)
            return
        if complete:
            names, values = batch.feature_names, batch.values[rows]
        else:
            names, values = _columns_of(batch, rows)
        if observe:
            slot.observe(names, values, self._settings.validation_rows)
        with slot.batch_model() as (served, swapped):
            if served is None:
                _fail_rows(outcome, rows, self._no_model(key, slot), key, None)
                return
            if swapped:
                self._events.put(
                    ModelEvent(
                        ModelEventKind.SWAPPED,
                        key,
                        served.identity.name,
                        served.identity.version,
                        load_duration_s=served.load_duration_s,
                    )
                )
            self._score_with(served, slot, rows, (names, values), batch, outcome, complete, observe)

    def _score_with(
        self,
        served: ServedModel,
        slot: ModelSlot,
        rows: npt.NDArray[np.intp],
        columns: tuple[tuple[str, ...], FloatMatrix],
        batch: DecodedBatch,
        outcome: BatchOutcome,
        complete: bool,
        observe: bool,
    ) -> None:
        """Feeds the key's rows to ``served``: records that lack a feature (or carry one a
        positional model cannot place) fail alone, the others are scored."""
        key = slot.key
        names, values = columns
        try:
            spec = self._input_spec(served, slot, names, batch, observe)
            mapping = map_features(names, spec)
        except MissingFeaturesError as err:
            self._fail(outcome, rows, err, key, served)
            return
        if mapping.missing:
            self._fail(outcome, rows, missing_features_error(mapping.missing), key, served)
            return
        features = mapping.gather(values)
        incomplete = None if complete else np.isnan(features).any(axis=1)
        if incomplete is not None and incomplete.any():
            model_names = spec.names or tuple(names[i] for i in mapping.columns)
            self._fail_incomplete(
                outcome, rows[incomplete], features[incomplete], model_names, key, served
            )
            rows, values, features = rows[~incomplete], values[~incomplete], features[~incomplete]
        if served.inputs.names is None:  # fields beyond the positional order: no place
            kept = self._fail_extra_fields(outcome, rows, values, (names, mapping), served, key)
            rows, features = rows[kept], features[kept]
        if len(rows):
            self._score_rows(rows, features, slot, served, outcome, observe)

    def _input_spec(
        self,
        served: ServedModel,
        slot: ModelSlot,
        names: tuple[str, ...],
        batch: DecodedBatch,
        observe: bool,
    ) -> InputSpec:
        """The model's inputs as names: a positional model takes the key's fixed field order
        (fixed from its stream records the first time one serves it; shown in ``/keys``).
        Batches that are not the key's stream records (V2 requests) never fix it."""
        field_orders, positional = batch.field_orders, batch.positional
        spec = served.inputs
        if spec.names is not None:
            return spec
        if positional and len(names) == spec.width:
            return InputSpec(spec.width, names)  # already in the model's order
        order = slot.positional_order
        if order is None:
            orders = field_orders.get(slot.key)
            candidate = names if orders is None else positional_order(orders, spec, slot.key)
            if len(candidate) != spec.width:
                raise MissingFeaturesError(
                    f"model {served.identity.name!r} takes {spec.width} positional features, "
                    f"the records carry {len(candidate)} ({', '.join(candidate) or 'none'})"
                )
            order = slot.fix_positional_order(candidate) if observe else candidate
        if len(order) != spec.width:
            raise MissingFeaturesError(
                f"model {served.identity.name!r} takes {spec.width} positional features, the "
                f"records of key {slot.key!r} carry {len(order)} ({', '.join(order)})"
            )
        return InputSpec(spec.width, order)

    def _fail_extra_fields(
        self,
        outcome: BatchOutcome,
        rows: npt.NDArray[np.intp],
        values: FloatMatrix,
        columns: tuple[tuple[str, ...], FeatureMapping],
        served: ServedModel,
        key: str,
    ) -> npt.NDArray[np.bool_]:
        """Fails the records carrying fields outside a positional model's order (where would
        they go?); returns which of ``rows`` are kept."""
        names, mapping = columns
        used = mapping.used_columns()
        order = tuple(names[index] for index in mapping.columns.tolist())
        extra = [index for index in range(len(names)) if index not in used]
        if not extra:
            return np.ones(len(rows), dtype=bool)
        carries = ~np.isnan(values[:, extra])
        odd = carries.any(axis=1)
        for position in np.flatnonzero(odd).tolist():
            fields = [names[extra[i]] for i in np.flatnonzero(carries[position]).tolist()]
            error = MissingFeaturesError(
                f"record carries field(s) {', '.join(fields)} that the positional model "
                f"{served.identity.name!r} has no place for (its key's fields: "
                f"{', '.join(order)})"
            )
            self._fail(outcome, rows[position : position + 1], error, key, served)
        return np.asarray(~odd)

    def _score_rows(
        self,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        slot: ModelSlot,
        served: ServedModel,
        outcome: BatchOutcome,
        observe: bool,
    ) -> None:
        key = slot.key
        started = time.perf_counter()
        model_failures = 0  # records the model raised on (not values it gave for one record)
        try:
            with served.instance() as model:
                try:
                    checked = self._checked(model.score_batch(features), len(rows), served)
                except Exception:  # noqa: BLE001 - isolate the failing records, one by one
                    rows, scored, model_failures = self._score_one_by_one(
                        rows, features, key, served, model, outcome
                    )
                else:
                    rows, scored = self._fail_unpublishable(rows, checked, key, served, outcome)
        except ScoringError as err:  # the evicted instance could not be made again
            self._fail(outcome, rows, err, key, served)
            rows, model_failures = rows[:0], len(rows)
        self.live_models.touch(served)
        elapsed = time.perf_counter() - started
        if len(rows):
            served.consecutive_failures = served.failing_batches = 0
            served.stats.record_batch(len(rows), elapsed)
            outcome.groups.append(
                ScoredGroup(key, served.identity, rows, scored, elapsed / len(rows))
            )
        elif model_failures and observe:  # a V2 client can never quarantine a model
            self._count_failures(slot, served, model_failures, outcome.errors[-1].reason)

    def _count_failures(
        self, slot: ModelSlot, served: ServedModel, failures: int, last_reason: str
    ) -> None:
        """Quarantines a model that raised on every record of several batches in a row: its
        backend broke, say. Records that fail now and then, between scored ones, never do."""
        served.consecutive_failures += failures
        served.failing_batches += 1
        if (
            served.consecutive_failures >= self._settings.quarantine_after_failures
            and served.failing_batches >= QUARANTINE_MIN_BATCHES
        ):
            self._quarantine(slot, served, last_reason)

    def _checked(self, output: object, rows: int, served: ServedModel) -> PublishableOutput:
        """The output if it is publishable and of the model's value type; raises otherwise."""
        checked = publishable(output, rows)
        if checked.value_type != served.value_type:
            raise ScoringError(
                f"model returned {checked.value_type} values; it publishes {served.value_type}"
            )
        return checked

    def _fail_unpublishable(
        self,
        rows: npt.NDArray[np.intp],
        checked: PublishableOutput,
        key: str,
        served: ServedModel,
        outcome: BatchOutcome,
    ) -> tuple[npt.NDArray[np.intp], np.ndarray]:
        if not checked.failed:
            return rows, checked.values
        for position, reason in checked.failed.items():
            error = ScoringError(f"model {served.identity.name!r}: {reason}")
            self._fail(outcome, rows[position : position + 1], error, key, served)
        kept = np.ones(len(rows), dtype=bool)
        kept[list(checked.failed)] = False
        return rows[kept], checked.values[kept]

    def _score_one_by_one(
        self,
        rows: npt.NDArray[np.intp],
        features: FloatMatrix,
        key: str,
        served: ServedModel,
        model: Model,
        outcome: BatchOutcome,
    ) -> tuple[npt.NDArray[np.intp], np.ndarray, int]:
        """Scores each record alone: (rows scored, their values, records the model raised on)."""
        kept: list[int] = []
        values: list[np.ndarray] = []
        raised = 0
        for position, row in enumerate(rows.tolist()):
            try:
                checked = self._checked(
                    model.score_batch(features[position : position + 1]), 1, served
                )
            except Exception as err:  # noqa: BLE001 - any model failure is this record's error
                reason = f"model {served.identity.name!r} failed to score the record: {err}"
                self._fail(outcome, np.array([row]), ScoringError(reason), key, served)
                raised += 1
                continue
            if checked.failed:  # a value this record led to, not a model that fails
                reason = f"model {served.identity.name!r}: {checked.failed[0]}"
                self._fail(outcome, np.array([row]), ScoringError(reason), key, served)
                continue
            kept.append(row)
            values.append(checked.values)
        scored = np.concatenate(values) if values else np.empty(0)
        return np.asarray(kept, dtype=np.intp), scored, raised

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

    def _quarantine(self, slot: ModelSlot, served: ServedModel, last_reason: str) -> None:
        """Takes a model that keeps failing out of service; its previous model serves again."""
        identity = served.identity
        reason = (
            f"quarantined after {served.consecutive_failures} records in a row failed to "
            f"score; the last: {last_reason}"
        )
        rejection = Rejection(slot.key, identity.name, identity.version, "quarantined", reason)
        taken, restored = slot.quarantine(served, rejection)
        if not taken:
            return  # another thread changed the key's model first
        self._count(model_quarantines=1)
        if restored is not None:
            reason += f"; {restored.identity.name!r} serves again"
        self._events.put(
            ModelEvent(
                ModelEventKind.QUARANTINED,
                slot.key,
                identity.name,
                identity.version,
                reason=reason,
                error_kind="quarantined",
            )
        )

    def close(self) -> None:
        self._loader.close()
        for slot in self.slots():
            slot.close()


def _check_shape(batch: DecodedBatch) -> None:
    """A batch whose parts disagree on its length would lose records: a codec defect."""
    rows = len(batch.records)
    if len(batch.keys) != rows or batch.values.shape[0] != rows:
        raise ValueError(
            f"malformed batch from the codec: {rows} records, {len(batch.keys)} keys, "
            f"{batch.values.shape[0]} rows of values"
        )


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
