"""The EA integration's two examples, on small budgets: the copy-paste loop of
docs/integrations/ea.md against the real service, and examples/ea/run.py end to end (it starts
its own `oracle serve`) down to its plot."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.client.doc_examples import DOCS, doc_example
from tests.client.service_process import WORKER_TOKEN, ServiceProcess

pytestmark = pytest.mark.slow


def test_the_documented_ea_spends_its_epoch_budget_through_the_oracle(
    shared_service: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORACLE_URL", shared_service.url)
    monkeypatch.setenv("ORACLE_TOKEN", WORKER_TOKEN)
    source = doc_example(DOCS / "ea.md")
    assert "MAX_EPOCHS, BUDGET, POPULATION = 40, 2000, 10" in source
    source = source.replace("40, 2000, 10", "40, 400, 4")
    # A study of its own: the session's service is shared, and the README's test expects
    # "iris-ea" to have no finished runs.
    assert '"iris-ea"' in source
    study = f"iris-ea-{uuid.uuid4().hex[:8]}"
    source = source.replace('"iris-ea"', repr(study))
    namespace: dict[str, object] = {"__name__": "ea_example"}
    exec(compile(source, "docs/integrations/ea.md", "exec"), namespace)

    spent, evaluated = namespace["spent"], namespace["evaluated"]
    assert isinstance(spent, int) and isinstance(evaluated, int)
    assert 400 - 40 < spent <= 400 and evaluated >= 400 // 40
    runs = httpx.get(
        f"{shared_service.url}/v1/runs",
        params={"study_id": study, "limit": 100},
        headers={"authorization": f"Bearer {WORKER_TOKEN}"},
    ).json()["runs"]
    assert len(runs) == evaluated
    assert {r["status"] for r in runs} <= {"completed", "stopped"}


def test_the_ea_comparison_runs_both_arms_and_plots(tmp_path: Path) -> None:
    from examples.ea import run

    plot = tmp_path / "ea.png"
    args = "--datasets iris --seeds 1 --population 3 --budget 200 --max-epochs 20"
    assert run.main([*args.split(), "--no-write", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
