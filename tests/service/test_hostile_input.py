"""Hostile and broken input for every write endpoint, as a table: each gets the right 4xx, a
message that names the field, and leaves every table exactly as it was (rows and contents),
on a real SQLite file and on real Postgres."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from core import bundle, registry
from service.main import create_app
from tests.conftest import TABLES, _truncate, auth, settings_for
from tests.training.conftest import random_bundle

MAX_BODY = 64 * 1024  # above a config's 16 KiB, below the default 256 KiB
RUN_OK = {"study_id": "s1", "max_epochs": 100}
POINT_OK = {"epoch": 2, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}
PREDICT_OK = {
    "max_epochs": 100,
    "epochs": [1, 2],
    "mqe": [1.0, 0.9],
    "topographic_error": [0.1, 0.1],
    "dead_neuron_ratio": [0.1, 0.1],
}
ORDER_BY = {
    "checkpoints": "run_pk, epoch",
    "runs": "pk",
    "studies": "pk",
    "aliases": "name",
    "model_versions": "pk",
}

# Write endpoints: (name, method, path, a valid body, a path that holds an id to mangle).
ENDPOINTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "put_study": ("PUT", "/v1/studies/s-new", {"description": "a study"}),
    "put_run": ("PUT", "/v1/runs/r-new", RUN_OK),
    "create_run": ("POST", "/v1/runs", RUN_OK),
    "checkpoint": ("POST", "/v1/runs/r1/checkpoints", POINT_OK),
    "finish": ("POST", "/v1/runs/r1/finish", {"status": "completed"}),
    "predict": ("POST", "/v1/predict", PREDICT_OK),
    "activate": ("POST", "/v1/models/m2/activate", None),
}
ID_PATHS = {
    "put_study": "/v1/studies/{id}",
    "put_run": "/v1/runs/{id}",
    "checkpoint": "/v1/runs/{id}/checkpoints",
    "finish": "/v1/runs/{id}/finish",
    "activate": "/v1/models/{id}/activate",
}
ID_FIELD = {
    "put_study": "study_id",
    "put_run": "run_id",
    "checkpoint": "run_id",
    "finish": "run_id",
    "activate": "version",
}


@dataclass(frozen=True)
class Case:
    """One bad request and what it must get: a status (or one of several) and a field named."""

    name: str
    method: str
    path: str
    body: Any = None  # JSON-able, sent as JSON
    raw: bytes | None = None  # sent as is, instead of `body`
    headers: dict[str, str] = field(default_factory=dict)
    status: tuple[int, ...] = (422,)
    names: str | None = None  # the field (or word) the message must name


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def _raw(text_body: str) -> bytes:
    return text_body.encode()


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _deep(depth: int, leaf: str = "1") -> RawJSON:
    """A JSON object nested `depth` levels, as text: json.dumps itself recurses too far."""
    return RawJSON('{"a": ' * depth + leaf + "}" * depth)


def _field_cases(endpoint: str, base: dict[str, Any], fields: dict[str, list[Any]]) -> list[Case]:
    method, path, _ = ENDPOINTS[endpoint]
    cases = []
    for name, values in fields.items():
        for i, value in enumerate(values):
            label = f"{endpoint}-{name}-{i}"
            if isinstance(value, RawJSON):
                body = json.dumps(_with(base, **{name: "__RAW__"})).replace('"__RAW__"', value)
                cases.append(Case(label, method, path, raw=_raw(body), names=name))
            elif value is MISSING:
                rest = {k: v for k, v in base.items() if k != name}
                cases.append(Case(label, method, path, body=rest, names=name))
            else:
                cases.append(
                    Case(label, method, path, body=_with(base, **{name: value}), names=name)
                )
    return cases


class RawJSON(str):
    """A JSON literal that Python's json.dumps would not write (NaN, Infinity, 1e400...)."""


MISSING = object()
NAN, INF, NINF = RawJSON("NaN"), RawJSON("Infinity"), RawJSON("-Infinity")
BIG_INT = 10**30
HUGE = 1e308
BAD_INTS = ["1", 1.5, True, None, [], {}, NAN, INF, -1, BIG_INT, HUGE, RawJSON("1e400")]


def _generic_cases(endpoint: str) -> list[Case]:
    """What every body-taking endpoint must refuse, whatever its fields."""
    method, path, body = ENDPOINTS[endpoint]
    assert body is not None
    good = json.dumps(body)
    first_key = next(iter(body))
    return [
        Case(
            f"{endpoint}-content-type",
            method,
            path,
            raw=_raw(good),
            headers={"content-type": "text/plain"},
            status=(415,),
            names="JSON",
        ),
        Case(
            f"{endpoint}-form",
            method,
            path,
            raw=b"a=1",
            headers={"content-type": "application/x-www-form-urlencoded"},
            status=(415,),
            names="JSON",
        ),
        Case(f"{endpoint}-empty", method, path, raw=b"", status=(422,), names="body"),
        Case(f"{endpoint}-malformed", method, path, raw=good[:-3].encode(), names="JSON"),
        Case(f"{endpoint}-array", method, path, raw=b"[1, 2]", names="body"),
        Case(f"{endpoint}-string", method, path, raw=b'"x"', names="body"),
        Case(f"{endpoint}-not-utf8", method, path, raw=b'{"\xff\xfe": 1}', names="UTF-8"),
        Case(f"{endpoint}-unknown-field", method, path, body=_with(body, sneaky=1), names="sneaky"),
        # nested past the parser's bound (bodies.MAX_DEPTH): refused before json parses it
        Case(
            f"{endpoint}-deep-field",
            method,
            path,
            raw=_raw(good[:-1] + ', "sneaky": ' + "[" * 5000 + "]" * 5000 + "}"),
            names="sneaky",
        ),
        Case(f"{endpoint}-deep-array", method, path, raw=_raw("[" * 100 + "]" * 100), names="body"),
        Case(
            f"{endpoint}-duplicate-key",
            method,
            path,
            raw=_raw(good[:-1] + f", {json.dumps(first_key)}: {json.dumps(body[first_key])}}}"),
            names=first_key,
        ),
        Case(
            f"{endpoint}-over-limit",
            method,
            path,
            body=_with(body, padding="x" * (MAX_BODY + 10)),
            status=(413,),
            names="limit",
        ),
        Case(
            f"{endpoint}-over-limit-chunked",
            method,
            path,
            raw=_raw(json.dumps(_with(body, padding="x" * (MAX_BODY * 4)))),
            headers={"transfer-encoding": "chunked"},
            status=(413,),
            names="limit",
        ),
    ]


def _id_cases(endpoint: str) -> list[Case]:
    """Ids with path tricks and odd characters: a 422 naming the id, or no route at all."""
    method, _, body = ENDPOINTS[endpoint]
    template = ID_PATHS[endpoint]
    name = ID_FIELD[endpoint]
    ids = {
        "dotdot": "%2E%2E",
        "traversal": "..%2F..%2Fetc",
        "slash": "a%2Fb",
        "backslash": "a%5Cb",
        "space": "a%20b",
        "unicode": "r%C3%A9sum%C3%A9",
        "emoji": "%F0%9F%98%80",
        "nul": "a%00b",
        "semicolon": "a%3Bb",
        "leading-dash": "-a",
        "long": "a" * 200,
        "query-like": "a%3Fb%3D1",
    }
    cases = []
    for label, raw_id in ids.items():
        routed = "%2F" not in raw_id  # a decoded slash leaves the route: 404 from the router
        cases.append(
            Case(
                f"{endpoint}-id-{label}",
                method,
                template.format(id=raw_id),
                body=body,
                status=(422,) if routed else (404, 422),
                names=name if routed else None,
            )
        )
    return cases


def _cases() -> list[Case]:
    cases: list[Case] = []
    for endpoint in ("put_study", "put_run", "create_run", "checkpoint", "finish", "predict"):
        cases += _generic_cases(endpoint)
    for endpoint in ID_PATHS:
        cases += _id_cases(endpoint)
    cases += _field_cases(
        "put_study",
        {"description": "a study"},
        {
            # NUL: Postgres's text columns cannot hold it (it was a 500 there)
            "description": [123, True, ["x"], {"a": 1}, "x" * 4001, "a\x00b"],
            "policy": ["median", 1, []],
        },
    )
    policy_fields: dict[str, list[Any]] = {
        "min_progress": ["0.2", True, -0.1, 1.5, NAN, INF, HUGE],
        "confidence": [0.5, 1.1, NAN, "0.9"],
        "min_finished_runs": [0, 2.5, "5", BIG_INT, NAN],
        "decider": ["oracle", 1, None],
        "weights": [[1, 1, 0.5], "x"],
        "threshold": ["p50", 50],
        "surprise": [1],
    }
    method, path, _ = ENDPOINTS["put_study"]
    for name, values in policy_fields.items():
        for i, value in enumerate(values):
            policy = json.dumps({name: "__RAW__"}).replace(
                '"__RAW__"', value if isinstance(value, RawJSON) else json.dumps(value)
            )
            cases.append(
                Case(
                    f"put_study-policy.{name}-{i}",
                    method,
                    path,
                    raw=_raw(f'{{"policy": {policy}}}'),
                    names=f"policy.{name}",
                )
            )
    for name, value in {
        "weights.mqe": NAN,
        "weights.topographic_error": INF,
        "weights.dead_neuron_ratio": -1,
        "threshold.value": NINF,
        "threshold.mode": RawJSON('"median"'),
    }.items():
        outer, inner = name.split(".")
        literal = value if isinstance(value, RawJSON) else json.dumps(value)
        cases.append(
            Case(
                f"put_study-policy.{name}",
                method,
                path,
                raw=_raw(f'{{"policy": {{"{outer}": {{"{inner}": {literal}}}}}}}'),
                names=f"policy.{outer}",
            )
        )
    run_fields: dict[str, list[Any]] = {
        "study_id": [123, None, "", "../x", "a b", "é", "a" * 200, MISSING],
        "max_epochs": [*BAD_INTS, 0, 10_000_001, MISSING],
        "config": [
            [],
            "x",
            1,
            _nested(9),
            _nested(50),
            _deep(5000),
            _deep(5000, leaf="{}"),
            {"big": "x" * 17_000},
            RawJSON('{"a": NaN}'),
            RawJSON('{"a": [1, Infinity]}'),
        ],
        "dataset": [123, "x" * 129, {"a": 1}, "wine\x00"],
    }
    for endpoint in ("put_run", "create_run"):
        cases += _field_cases(endpoint, RUN_OK, run_fields)
    cases += _field_cases(
        "checkpoint",
        POINT_OK,
        {
            "epoch": [*BAD_INTS, 101, 10_000_001, MISSING],
            "mqe": ["1", True, [], {}, -1.0, -HUGE, NINF, MISSING],
            "topographic_error": ["0.1", True, 1.5, -0.1, HUGE, MISSING],
            "dead_neuron_ratio": ["0.1", False, 1.0001, -1e-9, BIG_INT, MISSING],
            "wall_s": ["1", True, -1.0, NAN, INF, NINF, [1]],
        },
    )
    cases += _field_cases(
        "finish",
        {"status": "completed"},
        {
            "status": ["done", "running", 1, None, "COMPLETED", MISSING],
            "final": [
                "x",
                [],
                1,
                {"mqe": 1.0},
                {"mqe": -1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1},
                {"mqe": 1.0, "topographic_error": 2.0, "dead_neuron_ratio": 0.1},
                {"mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1, "x": 1},
            ],
        },
    )
    cases += _field_cases(
        "predict",
        PREDICT_OK,
        {
            "max_epochs": [*BAD_INTS, 0, MISSING],
            "epochs": [
                [],
                ["1", "2"],
                [2, 1],
                [1, 1],
                [-1, 2],
                [1, 101],
                [1.5, 2],
                "1,2",
                list(range(1, 1100)),
                MISSING,
            ],
            # a diverged map's metric (null, NaN, Infinity) has nothing to forecast from: a 422,
            # not a 503 that a client would retry
            "mqe": [
                [1.0],
                [1.0, 0.9, 0.8],
                [-1.0, 0.9],
                ["1", 0.9],
                "x",
                [None, 0.9],
                RawJSON("[1.0, NaN]"),
                MISSING,
            ],
            "topographic_error": [[0.1, 1.5], [0.1], [0.1, None], MISSING],
            "dead_neuron_ratio": [[0.1, -0.5], [0.1, "0.1"], RawJSON("[0.1, Infinity]"), MISSING],
            "config": [[], _nested(9), _deep(5000)],
            "weights": [
                [1, 1],
                [1, 1, 1, 1],
                [-1, 1, 1],
                ["1", 1, 1],
                "x",
                RawJSON("[NaN, 1, 1]"),
                RawJSON("[1, Infinity, 1]"),
                {"mqe": 1},
            ],
        },
    )
    cases.append(
        Case(
            "activate-unknown-version",
            "POST",
            "/v1/models/nope/activate",
            status=(404,),
            names="version",
        )
    )
    cases.append(
        Case(
            "activate-rejected-version",
            "POST",
            "/v1/models/m-rejected/activate",
            status=(409,),
            names="rejected",
        )
    )
    return cases


CASES = _cases()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def hostile_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[tuple[FastAPI, str]]:
    """A served app with stored state: a study, a run with a checkpoint, an active model."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("hostile") / "oracle.db"
        shutil.copy(sqlite_template, path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_server_url")
        _truncate(url)
    app = create_app(settings_for(url, max_body_bytes=MAX_BODY))
    with TestClient(app, headers=auth("admin")) as client:
        client.put("/v1/studies/s1", json={"description": "stored"}).raise_for_status()
        client.put("/v1/runs/r1", json=RUN_OK).raise_for_status()
        client.post("/v1/runs/r1/checkpoints", json=_with(POINT_OK, epoch=1)).raise_for_status()
        artifact = random_bundle()
        manifest = bundle.load(artifact).manifest
        with app.state.oracle.db.writes.begin() as session:
            for version, status in (
                ("m1", "candidate"),
                ("m2", "candidate"),
                ("m-rejected", "rejected"),
            ):
                registry.add_version(
                    session,
                    version=version,
                    architecture="lite",
                    manifest=manifest,
                    artifact=artifact,
                    status=status,
                    reason="failed the gate" if status == "rejected" else None,
                )
        client.post("/v1/models/m1/activate").raise_for_status()
        yield app, url
    if request.param == "postgres":
        _truncate(url)


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a fixed order, as plain values."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: [
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in conn.execute(
                        text(f"SELECT * FROM {table} ORDER BY {ORDER_BY[table]}")
                    )
                ]
                for table in TABLES
            }
    finally:
        engine.dispose()


def _send(client: TestClient, case: Case) -> Any:
    headers = dict(case.headers)
    if case.raw is not None:
        headers.setdefault("content-type", "application/json")
        content: bytes | Iterator[bytes] = case.raw
        if headers.pop("transfer-encoding", None) == "chunked":
            raw = case.raw
            content = iter([raw[i : i + 1024] for i in range(0, len(raw), 1024)])
        return client.request(case.method, case.path, content=content, headers=headers)
    if case.body is None:
        return client.request(case.method, case.path, headers=headers)
    return client.request(case.method, case.path, json=case.body, headers=headers)


def _named(detail: Any, name: str) -> bool:
    if isinstance(detail, list):
        return any(
            name == item.get("field")
            or str(item.get("field", "")).startswith(name + ".")
            or name in str(item.get("msg", ""))
            for item in detail
        )
    return name in str(detail)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_refused_and_stores_nothing(
    hostile_app: tuple[FastAPI, str], case: Case
) -> None:
    app, url = hostile_app
    before = snapshot(url)
    with TestClient(app, headers=auth("admin"), raise_server_exceptions=False) as client:
        response = _send(client, case)
    assert response.status_code in case.status, (case, response.status_code, response.text[:500])
    detail = response.json()["detail"]
    if case.names is not None:
        assert _named(detail, case.names), (case.name, detail)
    after = snapshot(url)
    for table in TABLES:
        assert after[table] == before[table], f"{case.name} changed {table}"


def test_hostile_input_table_covers_every_write_endpoint() -> None:
    for endpoint in ENDPOINTS:
        named = [c for c in CASES if c.name.startswith(f"{endpoint}-")]
        assert len(named) >= 10, (endpoint, len(named))


def test_hostile_input_valid_bodies_are_accepted(hostile_app: tuple[FastAPI, str]) -> None:
    """The table's base bodies are valid: each refusal above is for the one thing changed."""
    app, _ = hostile_app
    with TestClient(app, headers=auth("admin")) as client:
        for name, (method, path, body) in ENDPOINTS.items():
            response = client.request(method, path, json=body)
            assert response.status_code in (200, 201), (name, response.text)
        weighted = client.post("/v1/predict", json=_with(PREDICT_OK, weights=[1.0, 2.0, 0.0]))
        assert weighted.status_code == 200, weighted.text
