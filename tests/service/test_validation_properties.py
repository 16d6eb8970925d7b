"""Property-based: whatever a worker sends, the answer is a decision or a clear 4xx, and a 4xx
stores nothing."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from service.main import create_app
from tests.conftest import auth, settings_for

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "epoch": values,
        "mqe": values,
        "topographic_error": values,
        "dead_neuron_ratio": values,
        "wall_s": values,
        "extra": values,
    },
)


def _valid(body: dict[str, Any]) -> bool:
    def metric(v: Any, high: float | None) -> bool:
        if v is None:
            return True
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if not math.isfinite(v):
            return True
        return v >= 0 and (high is None or v <= high)

    required = {"epoch", "mqe", "topographic_error", "dead_neuron_ratio"}
    if not required <= body.keys() or "extra" in body:
        return False
    epoch, wall = body["epoch"], body.get("wall_s")
    return (
        isinstance(epoch, int)
        and not isinstance(epoch, bool)
        and 0 <= epoch <= 100
        and metric(body["mqe"], None)
        and metric(body["topographic_error"], 1.0)
        and metric(body["dead_neuron_ratio"], 1.0)
        and (
            wall is None
            or (
                isinstance(wall, (int, float))
                and not isinstance(wall, bool)
                and math.isfinite(wall)
                and wall >= 0
            )
        )
    )


def test_checkpoint_validation_accepts_exactly_the_valid_bodies(sqlite_url: str) -> None:
    with TestClient(create_app(settings_for(sqlite_url)), headers=auth("worker")) as client:
        counter = iter(range(10**6))

        @settings(max_examples=300, deadline=None)
        @given(body=bodies)
        def check(body: dict[str, Any]) -> None:
            run_id = f"r{next(counter)}"
            client.put(f"/v1/runs/{run_id}", json={"study_id": "p", "max_epochs": 100})
            response = client.post(
                f"/v1/runs/{run_id}/checkpoints",
                content=json.dumps(body),
                headers={"content-type": "application/json"},
            )
            stored = client.get(f"/v1/runs/{run_id}").json()["n_checkpoints"]
            if _valid(body):
                assert response.status_code == 200, (body, response.text)
                assert response.json()["action"] in ("continue", "stop")
                assert stored == 1
            else:
                assert response.status_code == 422, (body, response.text)
                assert response.json()["detail"]
                assert stored == 0

        check()
