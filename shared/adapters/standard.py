"""Adapter ``standard``: the canonical body signed with Standard Webhooks (docs/contract.md §3.1).

A thin binding of :func:`shared.signing.verify_standard` and
:func:`shared.contracts.decode_event`, so the canonical path keeps its exact
behaviour and cost.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Final

import msgspec

from shared.adapters.base import Adapter, Canonical, PayloadError
from shared.contracts import FieldError, ProblemCode, decode_event
from shared.settings import decode_secret
from shared.signing import STANDARD_HEADERS, sign, verify_standard

__all__ = ["StandardAdapter", "dotted_error", "normalise_canonical"]

# msgspec: "Expected `str`, got `int` - at `$.shipment.id`"
_AT_PATH: Final = re.compile(r"^(?P<message>.*) - at `\$(?P<path>.*)`$", re.DOTALL)
# msgspec: "Object missing required field `id`"
_MISSING_FIELD: Final = re.compile(r"^Object missing required field `(?P<field>.+)`$")


def normalise_canonical(body: bytes) -> Canonical:
    """Decode a canonical body; :class:`PayloadError` with the field in dotted form if invalid.

    The typed decode stops at the first schema error, but JSON errors outrank
    schema errors, so a schema failure is checked for malformed JSON further on.
    """
    try:
        return Canonical(decode_event(body))
    except msgspec.ValidationError as exc:
        try:
            msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError) as malformed:
            raise PayloadError(
                ProblemCode.MALFORMED_JSON, f"the body is not JSON: {malformed}"
            ) from exc
        raise PayloadError(
            ProblemCode.VALIDATION_FAILED,
            "the body is JSON but not a valid courier event",
            [dotted_error(exc)],
        ) from exc
    except msgspec.DecodeError as exc:
        raise PayloadError(ProblemCode.MALFORMED_JSON, f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise PayloadError(ProblemCode.MALFORMED_JSON, "the body is nested too deeply") from exc


def dotted_error(exc: msgspec.ValidationError) -> FieldError:
    """msgspec's error with its path in dotted form: ``$.shipment.id`` -> ``shipment.id``.

    A missing field is named by its own path (``shipment.id``); an error about
    the whole body has the field ``""``. The API's 422 for a canonical body
    (``gateway_api.ingest.validation_errors``) starts with this error too.
    """
    message = str(exc)
    path = ""
    if matched := _AT_PATH.match(message):
        message, path = matched["message"], matched["path"].removeprefix(".")
    if missing := _MISSING_FIELD.match(message):
        path = f"{path}.{missing['field']}" if path else missing["field"]
    return FieldError(field=path, message=message)


class StandardAdapter(Adapter):
    """Standard Webhooks headers over ``{webhook-id}.{webhook-timestamp}.{body}``."""

    kind = "standard"
    __slots__ = ()

    @staticmethod
    def key_of(secret: str) -> bytes:
        return decode_secret(secret)

    @property
    def header_names(self) -> tuple[str, ...]:
        return STANDARD_HEADERS

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        verify_standard(self._keys, headers, body, now=now, tolerance_s=self._tolerance_s)

    def normalise(self, body: bytes) -> Canonical:
        return normalise_canonical(body)

    def sign(
        self, body: bytes, *, now: float, key_index: int = 0, msg_id: str | None = None
    ) -> dict[str, str]:
        """Standard Webhooks headers; ``webhook-id`` defaults to a digest of the body."""
        msg_id = msg_id or "msg_" + hashlib.sha256(body).hexdigest()[:24]
        timestamp = int(now)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._keys[key_index], msg_id, timestamp, body),
        }
