"""arq's job format as both sides see it: serializer, job record, enqueue script, keys.

Jobs are written in arq's own format (``arq:job:<id>`` holding
``{t, f, a, k, et}`` and the id in the queue's sorted set), so arq workers and
``arq.jobs.Job`` read them unchanged; the serializer is msgspec MessagePack,
never pickle (docs/contract.md §4.2).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Final, cast

import hiredis
import msgspec
from arq.constants import job_key_prefix, result_key_prefix
from msgspec import Struct

from shared.contracts import QueuedEvent

JOB_FUNCTION: Final = "process_event"
"""Name of the arq job function that processes one :class:`QueuedEvent`."""
JOB_EXPIRES_MS: Final = 86_400_000
"""A job not started within this long is dropped by arq (its ``expires_extra_ms``)."""
WORKER_HEALTH_PREFIX: Final = "gateway:worker-health:"


class QueueUnavailable(Exception):
    """The queue could not durably store a job (Redis down, timed out, or erroring).

    The root of the queue's errors; ``code`` is its stable machine name.
    """

    code: ClassVar[str] = "queue_unavailable"


class ReplicationUnconfirmed(QueueUnavailable):
    """The primary answered, but fewer replicas than ``GATEWAY_ACK_REPLICAS`` confirmed in time.

    The job may be on the primary: retrying at once would find it and answer
    "duplicate" to a courier whose event was never acknowledged; the courier's
    own retry, later, gets that truthful answer once replicas confirm it.
    """


def _enc_hook(obj: object) -> object:
    # arq stores exceptions as job results (e.g. JobExecutionFailed); keep their text.
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise NotImplementedError(f"cannot serialize {type(obj).__name__}")


encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
decoder = msgspec.msgpack.Decoder()


def serialize(obj: Any) -> bytes:
    """arq ``job_serializer``: MessagePack via msgspec."""
    return encoder.encode(obj)


def deserialize(data: bytes) -> Any:
    """arq ``job_deserializer``: MessagePack into plain Python values."""
    return decoder.decode(data)


def worker_health_key(queue_name: str, worker_id: str) -> str:
    """Redis key one worker refreshes while alive (arq shares one per queue by default)."""
    return f"{WORKER_HEALTH_PREFIX}{queue_name}:{worker_id}"


# KEYS: job key, result key, queue. ARGV: job id, serialized job, expiry ms, score.
ENQUEUE_LUA: Final = b"""
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"""
ENQUEUE_SHA: Final = hashlib.sha1(ENQUEUE_LUA, usedforsecurity=False).hexdigest().encode()


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP, packed by hiredis (C); its stubs type the tuple wrongly."""
    return cast("bytes", hiredis.pack_command(cast("tuple[bytes]", args)))


LOAD_SCRIPT: Final = pack(b"SCRIPT", b"LOAD", ENQUEUE_LUA)
JOB_PREFIX: Final = job_key_prefix.encode()
RESULT_PREFIX: Final = result_key_prefix.encode()


class ArqJob(Struct, frozen=True):
    """arq's job record (``arq.jobs.serialize_job``): a map with these five keys."""

    t: int | None
    f: str
    a: tuple[QueuedEvent]
    k: dict[str, Any]
    et: int
