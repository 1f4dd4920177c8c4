"""ServingCore: the one transport-neutral façade that runtimes and the API call.

Runtimes hand it model messages and decoded batches; it owns the slots, the loader and the
event log. Scoring runs on the callers' threads (the runtime's, and the API's for V2 requests,
possibly at once); loading runs on the loader's threads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from streamserve.codecs.base import DecodedBatch
from streamserve.descriptor import ModelDescriptor
from streamserve.errors import (
    NoModelError,
    RejectedInput,
    ScoringError,
    ScoringTimeoutError,
)
from streamserve.formats.archive import ArchiveLimits
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.cache import ArtifactCache
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.admission import ModelAdmission
from streamserve.serving.budget import LiveModels
from streamserve.serving.deadline import CallSite, CallWatch, TimedCall, TimedCalls, result_of
from streamserve.serving.events import EventLog, ModelEvent, ModelEventKind
from streamserve.serving.loader import LoadJob, ModelLoader
from streamserve.serving.outcome import INTERNAL_ERROR, BatchOutcome, RecordError
from streamserve.serving.reloads import RELOADS_AHEAD, ModelReloads, WaitingGroup
from streamserve.serving.routing import KeyRouter, WatchedRouter, routed_batch
from streamserve.serving.scoring import ModelCall, ModelScoring
from streamserve.serving.slot import ModelSlot, Rejection, ServedModel
from streamserve.settings import ServingSettings

# Upper bounds of the batch-size histogram; the last bucket takes every larger batch.
BATCH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 1 << 62)
MAX_KEYLESS_REJECTIONS = 1000
log = logging.getLogger(__name__)


class ServingCore:
    """Serves every key's current model: takes model messages (loaded and validated off the
    scoring path), scores decoded batches (one result or error per record), and keeps the
    statistics, events and rejections that the API and the runtimes report.

    Use it as a context manager, or call :meth:`close`, to stop its loader and close its
    models.
    """

    def __init__(
        self,
        settings: ServingSettings,
        registry: FactoryRegistry | None = None,
        *,
        router: KeyRouter | None = None,
    ) -> None:
        self._settings = settings
        self._watch = CallWatch()
        self._router = None if router is None else WatchedRouter(router, self._watch)
        self._admission = ModelAdmission(settings.security)  # first: bad keys stop startup
        self._registry = registry or FactoryRegistry(
            FactoryContext(
                threads_per_model=settings.threads_per_model,
                sklearn_trusted_types=tuple(settings.sklearn_trusted_types),
                cache=(
                    ArtifactCache(settings.artifact_cache_dir, settings.artifact_cache_max_bytes)
                    if settings.artifact_cache_dir is not None
                    else None
                ),
                archive_limits=ArchiveLimits(
                    settings.security.max_unpacked_bytes, settings.security.max_archive_members
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
            load_timeout_s=settings.load_timeout_s,
            probe_timeout_s=settings.probe_timeout_s,
        )
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._scoring = ModelScoring(
            settings, self.live_models, self._events, self._count, self._watch
        )
        self._scoring_calls = TimedCalls("scoring")
        self._reloads = ModelReloads(self.live_models)

    @property
    def settings(self) -> ServingSettings:
        return self._settings

    def __enter__(self) -> ServingCore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- models --------------------------------------------------------------------------------
    def submit_model_message(
        self,
        payload: bytes,
        origin: str = "",
        signature: bytes | None = None,
        *,
        in_key_order: bool = False,
    ) -> ModelDescriptor | None:
        """Admits a model message (its size; its ``signature`` when trusted keys are set:
        :mod:`streamserve.serving.admission`), decodes it and loads it off-path; a refused or
        bad message becomes a rejection. ``in_key_order``: see :meth:`submit_model`."""
        try:
            descriptor = self._admission.admit(payload, signature)
        except RejectedInput as err:
            self.reject_model_message(err, origin)
            return None
        self.submit_model(descriptor, origin, in_key_order=in_key_order)
        return descriptor

    def submit_tombstone(
        self, key: bytes, origin: str = "", signature: bytes | None = None
    ) -> bool:
        """A models-stream tombstone: unloads ``key`` if admitted (signed, when trusted keys
        are set), else rejects it. Whether a key was unloaded."""
        try:
            self._admission.admit_tombstone(key, signature)
        except RejectedInput as err:
            self.reject_model_message(err, origin)
            return False
        return self.unload(key.decode("utf-8", "replace"), origin)

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

    def submit_model(
        self, descriptor: ModelDescriptor, origin: str = "", *, in_key_order: bool = False
    ) -> None:
        """Loads a model off-path. ``in_key_order``: only once the key's earlier models
        submitted so are loaded or rejected (a restart rebuilding its models from the topic;
        :class:`~streamserve.serving.loader.ModelLoader`)."""
        self._count(model_messages=1)
        with self._slots_lock:  # sequence numbers in submission order, unloads included
            sequence = next(self._sequence)
            self._loading.setdefault(descriptor.data_type, set()).add(sequence)
        self._loader.submit(LoadJob(descriptor, sequence, origin, in_key_order=in_key_order))

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

    def wait_for_reloads(self, timeout_s: float | None = None) -> bool:
        """Waits until no evicted model is being made again; False on timeout."""
        return self._reloads.wait_idle(timeout_s)

    @property
    def loads_pending(self) -> int:
        return self._loader.pending

    def drain_events(self) -> list[ModelEvent]:
        return self._events.drain()

    # --- slots ---------------------------------------------------------------------------------
    def stage(self, key: str, served: ServedModel) -> bool:
        """Stages a loaded, validated model in its key's slot, made for it if need be; never
        makes a slot for a model that could not stage (the key was unloaded after it came).

        A staged model counts against the live-model budget at once: with more keys than the
        budget, the instances of models waiting for their first batch would otherwise all stay
        in memory (100,000 keys loading)."""
        with self._slots_lock:
            slot = self._slots.get(key)
            if slot is None:
                if served.identity.sequence <= self._unloaded_at.get(key, -1):
                    return False
                slot = self._slots[key] = ModelSlot(key, self._settings.max_rejections_kept)
        staged = slot.stage(served)
        if staged:
            self.live_models.touch(served)
        return staged

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

        ``observe``: whether the records are stream records: their columns and rows validate
        their key's next models, and the router (if any) routes them. V2 requests are not: they
        name the model they want and may be shaped otherwise.
        Nothing a model or a record does makes this raise: it becomes error records.
        """
        _check_shape(batch)
        deadline_s = self._settings.scoring_deadline_s
        if deadline_s is None:
            outcome = self._score_now(batch, observe, None)
        else:
            outcome = self._score_within(batch, observe, deadline_s)
        _complete(outcome, len(batch))
        outcome.record_stats()
        self._count_batch(batch, outcome)
        return outcome

    def _score_within(self, batch: DecodedBatch, observe: bool, deadline_s: float) -> BatchOutcome:
        """Scores ``batch`` on a worker, giving each model or routing call ``deadline_s``.

        A batch of many calls may take longer than the deadline; a single call that overruns
        it is stuck. It is left running, and its model (or the router's key) gets no more
        calls until it returns. For stream records the model is taken out of service and the
        batch scored again from its start without it (each attempt finds a new stuck call, so
        a batch costs one deadline per model that hangs in it); a request (V2) fails with the
        time limit. An abandoned attempt's outcome is never used: no record is scored twice
        into the output.
        """
        stuck: set[CallSite] = set()
        while True:
            cancelled = threading.Event()
            timed = self._scoring_calls.start(
                lambda: self._score_now(batch, observe, cancelled),  # noqa: B023 - runs before the next turn
                f"scoring a batch of {len(batch)} records",
            )
            overran, site = self._wait_for(timed, deadline_s)
            if not overran:
                return cast(BatchOutcome, result_of(timed))
            if site is not None:
                site.call_stuck()
            if not self._scoring_calls.abandon(timed, None if site is None else _returned(site)):
                if site is not None:  # it returned meanwhile: its outcome is whole
                    site.call_returned()
                return cast(BatchOutcome, result_of(timed))
            cancelled.set()  # only now: a cancelled attempt's outcome is partial
            self._count(model_calls_overran=1)
            if site is None or site in stuck:
                return self._timed_out(batch, deadline_s, site)
            stuck.add(site)
            self._report_stuck(site, deadline_s, observe)
            if not observe:  # a request gains nothing from a second attempt
                return self._timed_out(batch, deadline_s, site)

    def _wait_for(self, timed: TimedCall, deadline_s: float) -> tuple[bool, CallSite | None]:
        """Waits while ``timed`` makes progress: whether a call of it (or the time between
        calls) overran ``deadline_s``, and where it is stuck then."""
        wait_s = deadline_s
        while not timed.wait(wait_s):
            site, since = self._watch.where(timed)
            waited = time.monotonic() - since
            if waited >= deadline_s:
                return True, site
            wait_s = deadline_s - waited
        return False, None

    def _report_stuck(self, site: CallSite, deadline_s: float, observe: bool) -> None:
        if not isinstance(site, ModelCall):
            log.error(
                "%s did not return within %g s; the call is left running and the key's records "
                "fail until it returns",
                site.describe(),
                deadline_s,
            )
            return
        reason = (
            f"{site.describe()} did not return from scoring {site.records} records within "
            f"{deadline_s:g} s; the call is left running (a call into a model library cannot be "
            "interrupted) and the model gets no more calls until it returns"
        )
        if not observe:  # a request never takes a model out of service
            log.error("%s (an inference request)", reason)
            return
        reason += "; it is out of service"
        log.error("%s", reason)
        self._scoring.quarantine(site.slot, site.served, reason, ScoringTimeoutError.kind)

    def _timed_out(
        self, batch: DecodedBatch, deadline_s: float, site: CallSite | None
    ) -> BatchOutcome:
        """Every record of ``batch`` failed with the time limit (decoding errors kept)."""
        where = "outside any model or routing call" if site is None else f"in {site.describe()}"
        error = ScoringTimeoutError(
            f"scoring the batch did not finish: a call {where} did not return within "
            f"{deadline_s:g} s"
        )
        outcome = BatchOutcome(batch.records)
        for row in range(len(batch)):
            decoding = batch.errors.get(row)
            if decoding is not None:
                outcome.errors.append(RecordError(row, decoding.kind, str(decoding)))
            else:
                outcome.errors.append(RecordError(row, error.kind, str(error), batch.keys[row]))
        return outcome

    def _score_now(
        self, batch: DecodedBatch, observe: bool, cancelled: threading.Event | None
    ) -> BatchOutcome:
        self._watch.begin()
        outcome = BatchOutcome(batch.records)
        for row, error in batch.errors.items():
            outcome.errors.append(RecordError(row, error.kind, str(error)))
        if observe and self._router is not None:
            batch = routed_batch(self._router, batch, outcome)
        with_gaps = _keys_with_gaps(batch)
        names = self._scoring.canonical_names(batch.feature_names)
        waiting: list[WaitingGroup] = []  # keys whose evicted models are being made again
        try:
            for key, rows in batch.rows_by_key().items():
                if cancelled is not None and cancelled.is_set():
                    break  # abandoned past the deadline: nobody reads this outcome
                complete = key not in with_gaps
                try:
                    group = self._score_key(
                        key, rows, batch, outcome, names if complete else None, observe=observe
                    )
                except Exception as err:  # noqa: BLE001 - a defect must fail this key's rows only
                    _fail_defect(outcome, key, rows, err)
                    continue
                if group is not None:
                    if len(waiting) < RELOADS_AHEAD:
                        group.start(self._reloads)  # made while the other keys score
                    waiting.append(group)
            self._score_waiting(waiting, batch, outcome, observe, cancelled)
        finally:
            for group in waiting:
                group.release()
        return outcome

    def _score_waiting(
        self,
        waiting: list[WaitingGroup],
        batch: DecodedBatch,
        outcome: BatchOutcome,
        observe: bool,
        cancelled: threading.Event | None,
    ) -> None:
        """Scores the keys whose models were made again off this thread, in turn, each once
        its reload returns; a few reloads ahead of the one awaited."""
        deadline_s = self._settings.scoring_deadline_s
        for index, group in enumerate(waiting):
            for ahead in waiting[index : index + RELOADS_AHEAD]:
                ahead.start(self._reloads)
            if cancelled is not None and cancelled.is_set():
                return
            try:
                error = group.await_model(self._reloads, self._watch, deadline_s, cancelled)
                if error is not None:
                    self._scoring.fail_unavailable(
                        group.slot, group.served, group.rows, error, outcome, observe
                    )
                else:
                    self._scoring.score(
                        group.served,
                        group.slot,
                        group.rows,
                        group.columns,
                        batch,
                        outcome,
                        group.complete,
                        observe,
                    )
            except Exception as err:  # noqa: BLE001 - a defect must fail this key's rows only
                _fail_defect(outcome, group.key, group.rows, err)
            finally:
                group.release()

    def _count_batch(self, batch: DecodedBatch, outcome: BatchOutcome) -> None:
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
        complete_names: tuple[str, ...] | None,
        *,
        observe: bool,
    ) -> WaitingGroup | None:
        """Scores one key's rows; ``complete_names``: the batch's columns when none of the rows
        lacks a value (no NaN), else ``None``. A key whose model was evicted is left for later:
        its group, holding the model, is returned for the model to be made again off this
        thread meanwhile."""
        slot = self._slots.get(key)
        if slot is None:
            outcome.fail_rows(rows, self._no_model(key, None), key, None)
            return None
        complete = complete_names is not None
        if complete_names is not None:
            names, values = complete_names, _rows_of(batch.values, rows)
        else:
            names, values = _columns_of(batch, rows)
            names = self._scoring.canonical_names(names)
        if observe:
            slot.observe(names, values, self._settings.validation_rows, complete=complete)
        served, swapped = slot.lease()
        if served is None:
            outcome.fail_rows(rows, self._no_model(key, slot), key, None)
            return None
        waits = False
        try:
            if swapped:
                replaced = slot.previous
                self._events.put(
                    ModelEvent(
                        ModelEventKind.SWAPPED,
                        key,
                        served.identity.name,
                        served.identity.version,
                        load_duration_s=served.load_duration_s,
                        previous="" if replaced is None else replaced.identity.name,
                        previous_version="" if replaced is None else replaced.identity.version,
                    )
                )
            if not served.live and served.calls_stuck == 0:
                waits = True
                return WaitingGroup(key, rows, (names, values), complete, slot, served)
            self._scoring.score(
                served, slot, rows, (names, values), batch, outcome, complete, observe
            )
            return None
        finally:
            if not waits:
                served.release()

    @property
    def artifact_cache_failures(self) -> int:
        """Times the artifact cache could not be written (a full or read-only disk)."""
        cache = self._registry.context.cache
        return 0 if cache is None else cache.failures

    @property
    def overrunning_calls(self) -> int:
        """Model calls still running past their time limit (threads lost to stuck models)."""
        return len(self._scoring_calls.overrunning) + self._loader.overrunning_calls

    def close(self) -> None:
        self._loader.close()
        self._scoring_calls.close()
        self._reloads.close()
        for slot in self.slots():
            slot.close()


def _rows_of(values: FloatMatrix, rows: npt.NDArray[np.intp]) -> FloatMatrix:
    """``values[rows]``; for one row (the common group with thousands of keys) a view of it,
    at a fifth of the cost: models leave their features unchanged (the conformance suite)."""
    if len(rows) == 1:
        row = int(rows[0])
        return values[row : row + 1]
    return values[rows]


def _fail_defect(
    outcome: BatchOutcome, key: str, rows: npt.NDArray[np.intp], err: Exception
) -> None:
    """A defect scoring ``key`` fails its rows alone (whatever they got before is dropped)."""
    outcome.drop_rows(rows)
    reason = f"scoring the records of key {key!r} failed: {type(err).__name__}: {err}"
    outcome.fail_rows(rows, ScoringError(reason), key, None)


def _complete(outcome: BatchOutcome, records: int) -> None:
    """Gives a record that got no outcome an ``internal_error``: a defect, said rather than
    lost (its offset would be committed with no output)."""
    if outcome.result_count + outcome.error_count == records:
        return
    answered = {error.row for error in outcome.errors}
    for group in outcome.groups:
        answered.update(group.rows.tolist())
    lost = [row for row in range(records) if row not in answered]
    log.error("a defect: %d records of a batch of %d got no outcome", len(lost), records)
    outcome.errors.extend(
        RecordError(row, INTERNAL_ERROR, "scoring gave this record no outcome (a defect)")
        for row in lost
    )


def _returned(site: CallSite) -> Callable[[object, BaseException | None], None]:
    """The cleanup of an abandoned call stuck at ``site``: the site takes calls again."""
    return lambda _result, _error: site.call_returned()


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
