"""Property: no signed body, however strange, makes the API answer 5xx."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contracts import ProblemCode
from tests.factories import event_payload, our_headers

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with one field replaced, removed, or nested field garbled."""
    payload: dict[str, Any] = event_payload(event_id=draw(st.text(min_size=1, max_size=20)))
    key = draw(st.sampled_from([*payload, "shipment.id", "location.lat", "extra"]))
    if draw(st.booleans()) and key in payload:
        del payload[key]
    elif "." in key:
        outer, inner = key.split(".")
        payload[outer] = {**payload[outer], inner: draw(json_values)}
    else:
        payload[key] = draw(json_values)
    return json.dumps(payload).encode()


bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda value: json.dumps(value).encode()),
    mutated_events(),
    mutated_events().map(lambda body: body[: len(body) // 2]),
)

KNOWN_CODES = {code.value for code in ProblemCode}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=bodies)
async def test_signed_random_bodies_never_yield_a_5xx(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/v1/events/acme", content=body, headers=our_headers(body))

    assert response.status_code < 500, response.text
    if response.status_code in (200, 202):
        assert response.json()["status"] in {"accepted", "duplicate"}
    else:
        assert response.status_code in {400, 422}, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] in KNOWN_CODES
