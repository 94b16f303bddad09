"""The ``process_event`` job: docs/contract.md §4 steps 1–4, retries and dead letters.

One run of a job:

0. **decode** the job (a :class:`~shared.contracts.QueuedEvent`) and, once the
   key is claimed, the courier's body it carries byte-exact, a carrier's body
   normalised by the source's adapter as configured now
   (:mod:`gateway_worker.normalise`); a body that does not decode is a
   permanent ``undecodable_payload``, a carrier status outside the vocabulary
   a permanent ``unmapped_status``;
1. **claim** the idempotency key in ``processed_events`` (a lease);
   already finished → ``duplicate``; leased by another live job → deferred
   (``arq.Retry`` for the rest of that lease, not an attempt);
2. **apply** the event to ``active_shipments`` (one conditional update that
   decides and returns the outcome; ``invalid_transition`` /
   ``order_mismatch`` become permanent errors);
3. **deliver** it downstream, when a downstream is configured;
4. **mark** the key ``succeeded``.

Every exception except cancellation is classified
(:func:`~gateway_worker.classify.classify`): a transient failure below
``GATEWAY_MAX_ATTEMPTS`` is recorded as a failed attempt and re-queued with
full-jitter backoff (``arq.Retry``); a permanent one, or the last allowed
attempt, writes the dead letter, marks the key ``dead_lettered`` and returns
normally, so arq stores a success and the API keeps answering duplicate.

arq retries only ``Retry``, ``CancelledError`` and ``RetryJob``, and its own
``job_timeout`` ends a job as a *failure* (``TimeoutError``), never a retry.
So the steps run under our own deadline, 80 % of ``GATEWAY_JOB_TIMEOUT_S``
(a counted ``job_timeout`` failure, leaving the rest to record it), and a
cancellation — SIGTERM past the grace period, or arq's timeout if recording
itself hangs — gives the lease back without counting an attempt and raises
``Retry`` so the job runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import msgspec
import structlog
from arq.worker import Retry
from msgspec import Struct
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.backoff import backoff_delay
from gateway_worker.classify import Classification, classify
from gateway_worker.downstream import Deliverer
from gateway_worker.errors import ErrorCode, PermanentError, TransientError
from gateway_worker.metrics import WorkerMetrics
from gateway_worker.normalise import Normaliser
from shared.contracts import CourierEvent, QueuedEvent
from shared.live import StatusChange, channel, encode_change
from shared.settings import Settings
from shared.storage.dead_letters import DeadLetterReason, DeadLetters, ReplayOutcome
from shared.storage.errors import StorageError, StoreRejected, StoreUnavailable
from shared.storage.events import (
    AlreadyDone,
    AttemptRecord,
    Claim,
    Claimed,
    ClaimRequest,
    EventStatus,
    Leased,
    ProcessedEvents,
)
from shared.storage.mongo import Document
from shared.storage.shipments import Decision, Outcome, Shipments

__all__ = ["WORK_DEADLINE_FRACTION", "EventProcessor", "JobResult", "utc_now"]

WORK_DEADLINE_FRACTION: Final = 0.8
"""Share of ``GATEWAY_JOB_TIMEOUT_S`` the steps may take; the rest records the outcome."""
_UNDECODABLE_REPR_LIMIT: Final = 16_384

log = structlog.get_logger("gateway_worker")


class JobResult(enum.StrEnum):
    """What a job returns to arq (stored as its result)."""

    SUCCEEDED = "succeeded"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


def utc_now() -> datetime:
    """The default clock: now, timezone-aware UTC."""
    return datetime.now(UTC)


class _Deferral(Struct, frozen=True):
    delay_s: float
    owner: str | None


class _Run:
    """State of one run of one job."""

    def __init__(self, queued: QueuedEvent, job_id: str, job_try: int) -> None:
        self.queued = queued
        self.job_id = job_id
        self.job_try = job_try
        self.token = uuid.uuid4().hex
        self.started = time.monotonic()
        self.claimed: Claimed | None = None
        self.event: CourierEvent | None = None

    @property
    def key(self) -> str:
        return self.queued.idempotency_key

    @property
    def duration_ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)


class _BatchRun(_Run):
    """One job's run inside a batch: where it has got to."""

    def __init__(self, index: int, queued: QueuedEvent, job_id: str, job_try: int) -> None:
        super().__init__(queued, job_id, job_try)
        self.index = index
        self.decision: Decision | None = None
        self.error: Exception | None = None
        self.ended: JobResult | _Deferral | Retry | None = None

    def bound(self) -> contextlib.AbstractContextManager[None]:
        """Its job's log context (as :meth:`EventProcessor.process` binds it)."""
        return structlog.contextvars.bound_contextvars(
            job_id=self.job_id,
            job_try=self.job_try,
            idempotency_key=self.queued.idempotency_key,
            request_id=self.queued.request_id,
            replay=self.queued.replay is not None,
        )


class EventProcessor:
    """Runs the job for one worker process; all dependencies are passed in.

    ``downstream`` is ``None`` when no downstream is configured. ``clock`` and
    ``rng`` are seams for tests (lease times, jitter).
    """

    def __init__(
        self,
        *,
        db: AsyncDatabase[Document],
        settings: Settings,
        worker_id: str,
        metrics: WorkerMetrics,
        downstream: Deliverer | None,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        publish: Callable[[str, bytes], Awaitable[object]] | None = None,
    ) -> None:
        self._publish = publish
        self._channel = channel(settings.queue_name)
        self._events = ProcessedEvents(db)
        self._shipments = Shipments(db)
        self._dead_letters = DeadLetters(db)
        self._normaliser = Normaliser(settings, metrics)
        self._settings = settings
        self._worker_id = worker_id
        self._metrics = metrics
        self._downstream = downstream
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._deadline_s = settings.job_timeout_s * WORK_DEADLINE_FRACTION

    async def process(self, job_id: str, job_try: int, payload: Any) -> JobResult:
        """Run one job; raises only ``arq.Retry``."""
        started = time.perf_counter()
        try:
            with structlog.contextvars.bound_contextvars(job_id=job_id, job_try=job_try):
                return await self._process(job_id, job_try, payload)
        finally:
            self._metrics.job_duration.observe(time.perf_counter() - started)

    async def process_batch(self, jobs: Sequence[tuple[str, int, Any]]) -> list[JobResult | Retry]:
        """Run several jobs ``(job_id, job_try, payload)`` together; each one's result or
        ``Retry``, in order.

        Each job ends exactly as :meth:`process` would end it; what is shared is the
        round trips: the keys are claimed in one bulk write and one read, the
        shipments updated in one ordered bulk write and one read, the successes
        marked in one bulk write (docs/decisions.md, "Worker CPU per event"). A job
        that cannot share them runs alone, after the others: a payload that does not
        decode, and a second job of a key already in the batch (it then finds the
        first one's lease and is deferred, as two concurrent runs would be).
        """
        started = time.perf_counter()
        runs: list[_BatchRun] = []
        alone: list[int] = []
        keys: set[str] = set()
        for index, (job_id, job_try, payload) in enumerate(jobs):
            try:
                queued = msgspec.convert(_upgrade(payload), QueuedEvent)
            except msgspec.ValidationError:
                alone.append(index)
                continue
            if queued.idempotency_key in keys:
                alone.append(index)
                continue
            keys.add(queued.idempotency_key)
            runs.append(_BatchRun(index, queued, job_id, job_try))
        results: list[JobResult | Retry | None] = [None] * len(jobs)
        try:
            if len(runs) > 1:
                for run, result in zip(runs, await self._batch(runs), strict=True):
                    results[run.index] = result
            else:
                alone = sorted([*alone, *(run.index for run in runs)])
            for index in alone:
                job_id, job_try, payload = jobs[index]
                try:
                    results[index] = await self.process(job_id, job_try, payload)
                except Retry as retry:
                    results[index] = retry
        finally:
            elapsed = time.perf_counter() - started
            for _ in runs:
                self._metrics.job_duration.observe(elapsed)
        return [Retry(defer=0) if result is None else result for result in results]

    async def _batch(self, runs: list[_BatchRun]) -> list[JobResult | Retry]:
        try:
            deadline = asyncio.timeout(self._deadline_s)
            try:
                async with deadline:
                    await self._batch_steps(runs)
            except TimeoutError:
                if not deadline.expired():
                    raise
                error = TransientError(
                    ErrorCode.JOB_TIMEOUT, f"steps did not finish within {self._deadline_s:g} s"
                )
                for run in runs:
                    if run.ended is None and run.error is None:
                        run.error = error
            return [await self._end(run) for run in runs]
        except asyncio.CancelledError:
            # As in process(): every run not yet ended gives its lease back and runs again.
            for run in runs:
                if not isinstance(run.ended, JobResult | Retry):
                    with run.bound():
                        await self._give_back(run)
            return [
                run.ended if isinstance(run.ended, JobResult | Retry) else Retry(defer=0)
                for run in runs
            ]

    async def _end(self, run: _BatchRun) -> JobResult | Retry:
        """The run's result once its steps are done: as :meth:`_process` ends a run."""
        with run.bound():
            try:
                if run.error is not None:
                    run.ended = await self._failed(run, run.error)
                elif isinstance(run.ended, _Deferral):
                    self._metrics.jobs.labels(outcome="deferred").inc()
                    log.info(
                        "job.deferred",
                        lease_owner=run.ended.owner,
                        defer_s=round(run.ended.delay_s, 3),
                    )
                    run.ended = Retry(defer=run.ended.delay_s)
            except Retry as retry:
                run.ended = retry
        assert isinstance(run.ended, JobResult | Retry)
        return run.ended

    async def _batch_steps(self, runs: list[_BatchRun]) -> None:
        """:meth:`_steps` for every run at once; sets each run's ``ended`` or ``error``."""
        working = await self._claim_batch(runs)
        applying = []
        for run in working:
            try:
                run.event = self._normaliser.event_of(run.queued)
            except Exception as exc:  # noqa: BLE001 - classified in _failed, as in process()
                run.error = exc
            else:
                applying.append(run)
        applied = await self._apply_batch(applying)
        if self._downstream is not None and applied:
            applied = await self._deliver_batch(self._downstream, applied)
        await self._mark_batch(applied)

    async def _deliver_batch(self, downstream: Deliverer, runs: list[_BatchRun]) -> list[_BatchRun]:
        """Deliver the runs' events at once; the runs delivered."""
        delivered = []
        outcomes = await asyncio.gather(
            *(self._deliver(downstream, run) for run in runs), return_exceptions=True
        )
        for run, outcome in zip(runs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                run.error = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                delivered.append(run)
        return delivered

    @staticmethod
    async def _deliver(downstream: Deliverer, run: _BatchRun) -> None:
        assert run.decision is not None
        assert run.event is not None
        with run.bound():
            await downstream.deliver(run.queued, run.decision.status, run.event)

    async def _claim_one(self, request: ClaimRequest, now: datetime) -> Claim:
        return await self._events.claim(
            request.key,
            source=request.source,
            event_id=request.event_id,
            job_id=request.job_id,
            owner=self._worker_id,
            token=request.token,
            now=now,
            lease_s=self._settings.lease_s,
            replay=request.replay,
            body=request.body,
        )

    async def _took(self, run: _Run, claim: Claim, now: datetime) -> JobResult | _Deferral | None:
        """What ``claim`` means for ``run``: how it ends (a duplicate, a deferral), or
        ``None`` when the run holds the lease and goes on."""
        match claim:
            case AlreadyDone(status=status):
                return await self._duplicate(run, status)
            case Leased(lease_until=lease_until, owner=owner):
                remaining = max(0.0, (lease_until - now).total_seconds())
                jitter = self._rng.uniform(0, 0.1 * self._settings.lease_s)
                return _Deferral(remaining + jitter, owner)
            case Claimed():
                run.claimed = claim
                await self._announce(run, EventStatus.PROCESSING, claim.attempts)
        return None

    async def _claim_batch(self, runs: list[_BatchRun]) -> list[_BatchRun]:
        now = self._clock()
        requests = [_claim_request(run) for run in runs]
        claims: list[Claim | None]
        try:
            claims = list(
                await self._events.claim_many(
                    requests, owner=self._worker_id, now=now, lease_s=self._settings.lease_s
                )
            )
        except StoreUnavailable as exc:
            for run in runs:
                run.error = exc
            return []
        except StorageError:
            # One key the store refuses must not hold the others back: each alone.
            claims = [None] * len(runs)
        working = []
        for run, request, claim in zip(runs, requests, claims, strict=True):
            with run.bound():
                try:
                    taken = claim if claim is not None else await self._claim_one(request, now)
                except StorageError as exc:
                    run.error = exc
                    continue
                run.ended = await self._took(run, taken, now)
            if run.ended is None:
                working.append(run)
        return working

    async def _apply_batch(self, runs: list[_BatchRun]) -> list[_BatchRun]:
        """Apply the runs' events in order; the runs whose events may go on."""
        if not runs:
            return []
        decisions: list[Decision | None]
        try:
            decisions = await self._shipments.apply_many(
                [(run.queued.source, _event(run)) for run in runs], now=self._clock()
            )
        except StoreUnavailable as exc:
            for run in runs:
                run.error = exc
            return []
        except StorageError:
            # One event the store refuses must not fail the others: each alone, in order.
            decisions = [None] * len(runs)
        applied = []
        for run, decision in zip(runs, decisions, strict=True):
            assert run.event is not None
            try:
                if decision is None:
                    decision = await self._shipments.apply_event(
                        run.queued.source, run.event, now=self._clock()
                    )
                _check_decision(decision, run.event)
            except Exception as exc:  # noqa: BLE001 - classified in _failed, as in process()
                run.error = exc
                continue
            run.decision = decision
            applied.append(run)
        return applied

    async def _mark_batch(self, runs: list[_BatchRun]) -> None:
        if not runs:
            return
        try:
            held = await self._events.mark_succeeded_many(
                [(run.key, run.token, run.duration_ms) for run in runs], now=self._clock()
            )
        except StorageError as exc:
            for run in runs:
                run.error = exc
            return
        for run, kept in zip(runs, held, strict=True):
            assert run.claimed is not None
            assert run.decision is not None
            with run.bound():
                if not kept:
                    log.warning("job.lease_lost", step="mark_succeeded")
                await self._announce(run, EventStatus.SUCCEEDED, run.claimed.attempts)
                if run.queued.replay is not None:
                    await self._record_replay(run, ReplayOutcome.SUCCEEDED, key_succeeded=True)
                self._succeeded(run, run.decision)
            run.ended = JobResult.SUCCEEDED

    async def _process(self, job_id: str, job_try: int, payload: Any) -> JobResult:
        payload = _upgrade(payload)
        try:
            queued = msgspec.convert(payload, QueuedEvent)
        except msgspec.ValidationError as exc:
            return await self._dead_letter_undecodable(job_id, job_try, payload, exc)
        run = _Run(queued, job_id, job_try)
        with structlog.contextvars.bound_contextvars(
            idempotency_key=queued.idempotency_key,
            request_id=queued.request_id,
            replay=queued.replay is not None,
        ):
            try:
                try:
                    result = await self._run_steps(run)
                except Exception as exc:  # noqa: BLE001 - every failure is classified
                    return await self._failed(run, exc)
            except asyncio.CancelledError:
                # Also while a failure is being recorded: a write that outlives
                # arq's job_timeout must not end the job as arq's failure.
                await self._give_back(run)
                # arq would record a cancellation by its own job_timeout as a
                # failure; Retry makes every cancellation a re-run.
                raise Retry(defer=0) from None
            if isinstance(result, _Deferral):
                self._metrics.jobs.labels(outcome="deferred").inc()
                log.info("job.deferred", lease_owner=result.owner, defer_s=round(result.delay_s, 3))
                raise Retry(defer=result.delay_s)
            return result

    async def _run_steps(self, run: _Run) -> JobResult | _Deferral:
        deadline = asyncio.timeout(self._deadline_s)
        try:
            async with deadline:
                return await self._steps(run)
        except TimeoutError as exc:
            if deadline.expired():
                raise TransientError(
                    ErrorCode.JOB_TIMEOUT, f"steps did not finish within {self._deadline_s:g} s"
                ) from exc
            raise

    async def _steps(self, run: _Run) -> JobResult | _Deferral:
        queued = run.queued
        now = self._clock()
        ended = await self._took(run, await self._claim_one(_claim_request(run), now), now)
        if ended is not None:
            return ended
        assert run.claimed is not None
        # Raises msgspec's errors for a body that no longer decodes, and a
        # carrier's unmapped status as unmapped_status: permanent.
        event = run.event = self._normaliser.event_of(queued)
        decision = await self._shipments.apply_event(queued.source, event, now=self._clock())
        _check_decision(decision, event)
        if self._downstream is not None:
            await self._downstream.deliver(queued, decision.status, event)
        if not await self._events.mark_succeeded(
            run.key, token=run.token, now=self._clock(), duration_ms=run.duration_ms
        ):
            log.warning("job.lease_lost", step="mark_succeeded")
        await self._announce(run, EventStatus.SUCCEEDED, run.claimed.attempts)
        if queued.replay is not None:
            await self._record_replay(run, ReplayOutcome.SUCCEEDED, key_succeeded=True)
        self._succeeded(run, decision)
        return JobResult.SUCCEEDED

    async def _announce(
        self, run: _Run, status: EventStatus, attempt: int, code: str | None = None
    ) -> None:
        """One Redis PUBLISH per status change (docs/contract.md §3.5); best effort."""
        if self._publish is None:
            return
        change = StatusChange(
            idempotency_key=run.key,
            source=run.queued.source,
            status=status.value,
            attempt=attempt,
            code=code,
            at_ms=int(time.time() * 1000),
        )
        try:
            await self._publish(self._channel, encode_change(change))
        except Exception as exc:  # noqa: BLE001 - a lost notice only delays a page's poll
            log.warning("job.publish_failed", error=repr(exc))

    def _succeeded(self, run: _Run, decision: Decision) -> None:
        self._metrics.jobs.labels(outcome="succeeded").inc()
        assert run.claimed is not None
        log.info(
            "job.succeeded",
            outcome=decision.outcome.value,
            status=decision.status,
            failed_attempts=run.claimed.attempts,
            duration_ms=run.duration_ms,
        )

    async def _duplicate(self, run: _Run, status: EventStatus) -> JobResult:
        self._metrics.jobs.labels(outcome="duplicate").inc()
        self._metrics.duplicates.labels(source=run.queued.source, stage="worker").inc()
        log.info("job.duplicate", status=status.value)
        if run.queued.replay is not None:
            await self._record_replay(
                run, ReplayOutcome.DUPLICATE, key_succeeded=status is EventStatus.SUCCEEDED
            )
        return JobResult.DUPLICATE

    async def _failed(self, run: _Run, exc: Exception) -> JobResult:
        classification = classify(exc)
        now = self._clock()
        if run.claimed is None:
            # The key was never leased by this run: there is no attempt to count.
            self._retry_uncounted(run, classification, exc, reason="not_claimed")
        attempt = run.claimed.attempts + 1
        final = not classification.transient or attempt >= self._settings.max_attempts
        if final:
            record = self._attempt(attempt, now, run, classification, retry_in_s=None)
            try:
                await self._dead_letter(run, classification, record, now)
            except StorageError as store_exc:
                self._retry_uncounted(run, classification, store_exc, reason="store_unavailable")
            return JobResult.DEAD_LETTERED
        delay = self._delay(attempt, classification)
        record = self._attempt(attempt, now, run, classification, retry_in_s=delay)
        try:
            recorded = await self._events.record_failure(
                run.key, token=run.token, attempt=record, now=now
            )
        except StorageError as store_exc:
            self._retry_uncounted(run, classification, store_exc, reason="store_unavailable")
        if not recorded:
            log.warning("job.lease_lost", step="record_failure")
        await self._announce(run, EventStatus.RETRYING, attempt, classification.code.value)
        self._metrics.jobs.labels(outcome="retried").inc()
        self._metrics.retries.labels(code=classification.code.value).inc()
        log.warning(
            "job.retrying",
            attempt=attempt,
            max_attempts=self._settings.max_attempts,
            code=classification.code.value,
            message=classification.message,
            delay_s=round(delay, 3),
            counted=True,
        )
        raise Retry(defer=delay) from exc

    def _retry_uncounted(
        self, run: _Run, classification: Classification, exc: Exception, *, reason: str
    ) -> NoReturn:
        """Re-queue without counting an attempt: the failure could not be recorded.

        The delay grows with arq's own try counter, so a long MongoDB outage
        backs off to the cap instead of spinning.
        """
        delay = self._delay(run.job_try, classification)
        self._metrics.jobs.labels(outcome="retried").inc()
        self._metrics.retries.labels(code=classification.code.value).inc()
        log.warning(
            "job.retrying",
            code=classification.code.value,
            message=classification.message,
            delay_s=round(delay, 3),
            counted=False,
            why_uncounted=reason,
            record_error=type(exc).__name__,
        )
        raise Retry(defer=delay) from exc

    async def _dead_letter(
        self, run: _Run, classification: Classification, record: AttemptRecord, now: datetime
    ) -> None:
        assert run.claimed is not None
        queued = run.queued
        reason = (
            DeadLetterReason.RETRIES_EXHAUSTED
            if classification.transient
            else DeadLetterReason.PERMANENT
        )
        # The dead letter first, then the key: a crash in between re-runs the
        # job, which fails the same way and rewrites the same dead letter.
        event = run.event
        try:
            await self._dead_letters.dead_letter(
                queued,
                shipment_id=None if event is None else event.shipment.id,
                event_type=None if event is None else event.event_type.value,
                reason=reason,
                code=classification.code.value,
                message=classification.message,
                attempts=[*run.claimed.attempt_log, record],
                now=now,
            )
        except StoreRejected as refused:
            # Even without its body the store refused the document: retrying
            # cannot change that, so the key still ends dead-lettered (its
            # processed_events record keeps the error) instead of retrying forever.
            log.exception("job.dead_letter_refused", error=str(refused)[:500])
        if not await self._events.mark_dead_lettered(
            run.key, token=run.token, attempt=record, now=now
        ):
            log.warning("job.lease_lost", step="mark_dead_lettered")
        await self._announce(
            run, EventStatus.DEAD_LETTERED, record.attempt, classification.code.value
        )
        if queued.replay is not None:
            await self._record_replay(run, ReplayOutcome.DEAD_LETTERED, key_succeeded=False)
        self._metrics.jobs.labels(outcome="dead_lettered").inc()
        self._metrics.dead_letters.labels(reason=reason.value, code=classification.code.value).inc()
        log.warning(
            "job.dead_lettered",
            reason=reason.value,
            code=classification.code.value,
            message=classification.message,
            attempts=record.attempt,
        )

    async def _dead_letter_undecodable(
        self, job_id: str, job_try: int, payload: Any, exc: msgspec.ValidationError
    ) -> JobResult:
        """Dead-letter a payload that is not a ``QueuedEvent``, under its arq job id."""
        classification = classify(exc)
        now = self._clock()
        fields = payload if isinstance(payload, dict) else {}
        record = AttemptRecord(
            attempt=1,
            at=now,
            code=classification.code.value,
            message=classification.message,
            transient=False,
            duration_ms=0,
        )
        try:
            await self._dead_letters.dead_letter(
                _salvage(job_id, fields),
                shipment_id=None,
                event_type=None,
                reason=DeadLetterReason.PERMANENT,
                code=classification.code.value,
                message=classification.message,
                attempts=[record],
                now=now,
            )
            await self._events.mark_undecodable(
                job_id, code=classification.code.value, message=classification.message, now=now
            )
        except StorageError as store_exc:
            delay = self._delay(job_try, classification)
            log.warning("job.retrying", code=classification.code.value, counted=False)
            raise Retry(defer=delay) from store_exc
        self._metrics.jobs.labels(outcome="dead_lettered").inc()
        self._metrics.dead_letters.labels(
            reason=DeadLetterReason.PERMANENT.value, code=classification.code.value
        ).inc()
        log.warning(
            "job.dead_lettered",
            reason=DeadLetterReason.PERMANENT.value,
            code=classification.code.value,
            message=classification.message,
            payload=repr(payload)[:_UNDECODABLE_REPR_LIMIT],
        )
        return JobResult.DEAD_LETTERED

    async def _give_back(self, run: _Run) -> None:
        """On cancellation: release the lease (shielded) without counting an attempt."""
        released = False
        if run.claimed is not None:
            release = asyncio.ensure_future(
                self._events.release(run.key, token=run.token, now=self._clock())
            )
            try:
                released = await asyncio.shield(release)
            except (StorageError, asyncio.CancelledError) as exc:
                log.warning("job.release_failed", error=type(exc).__name__)
        self._metrics.jobs.labels(outcome="cancelled").inc()
        log.info("job.cancelled", lease_released=released)

    async def _record_replay(
        self, run: _Run, outcome: ReplayOutcome, *, key_succeeded: bool
    ) -> None:
        # Best effort: the event's own outcome is already recorded; a lost
        # replay note must not turn a success into a retry.
        try:
            found = await self._dead_letters.record_replay_outcome(
                run.key,
                job_id=run.job_id,
                outcome=outcome,
                key_succeeded=key_succeeded,
                now=self._clock(),
            )
        except StorageError as exc:
            log.warning("job.replay_outcome_not_recorded", error=type(exc).__name__)
            return
        if not found:
            log.warning("job.replay_entry_missing", outcome=outcome.value)

    def _attempt(
        self,
        attempt: int,
        now: datetime,
        run: _Run,
        classification: Classification,
        *,
        retry_in_s: float | None,
    ) -> AttemptRecord:
        return AttemptRecord(
            attempt=attempt,
            at=now,
            code=classification.code.value,
            message=classification.message,
            transient=classification.transient,
            duration_ms=run.duration_ms,
            retry_in_ms=None if retry_in_s is None else round(retry_in_s * 1000),
        )

    def _delay(self, attempt: int, classification: Classification) -> float:
        settings = self._settings
        return backoff_delay(
            max(1, attempt),
            base_s=settings.backoff_base_s,
            multiplier=settings.backoff_multiplier,
            cap_s=settings.backoff_cap_s,
            rng=self._rng,
            retry_after_s=classification.retry_after_s,
        )


def _claim_request(run: _Run) -> ClaimRequest:
    queued = run.queued
    return ClaimRequest(
        key=run.key,
        source=queued.source,
        event_id=queued.event_id,
        job_id=run.job_id,
        token=run.token,
        replay=queued.replay is not None,
        body=queued.body,
    )


def _event(run: _Run) -> CourierEvent:
    assert run.event is not None
    return run.event


def _check_decision(decision: Decision, event: CourierEvent) -> None:
    """The rules' refusals as permanent errors."""
    if decision.outcome is Outcome.INVALID_TRANSITION:
        raise PermanentError(
            ErrorCode.INVALID_TRANSITION,
            f"shipment is {decision.status} (terminal); a newer "
            f"{event.event_type.value} cannot change it",
        )
    if decision.outcome is Outcome.ORDER_MISMATCH:
        raise PermanentError(
            ErrorCode.ORDER_MISMATCH,
            "shipment.order_id differs from the order the shipment belongs to",
        )


def _upgrade(payload: Any) -> Any:
    """A job queued before bodies travelled byte-exact carried the decoded ``event``."""
    if isinstance(payload, dict) and "body" not in payload:
        event = payload.get("event")
        if isinstance(event, dict) and isinstance(event.get("event_id"), str):
            return {**payload, "body": msgspec.json.encode(event), "event_id": event["event_id"]}
    return payload


def _salvage(job_id: str, fields: dict[Any, Any]) -> QueuedEvent:
    """What can be kept of a payload that is not a :class:`QueuedEvent`."""
    body = fields.get("body")
    at_ms = fields.get("received_at_ms")
    return QueuedEvent(
        idempotency_key=job_id,
        source=_text(fields.get("source")),
        event_id=_text(fields.get("event_id")),
        body=body if isinstance(body, bytes) else b"",
        request_id=_text(fields.get("request_id")),
        received_at_ms=at_ms if isinstance(at_ms, int) else 0,
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
