"""bench/susi_corpus.py: its loop is susi's own training, its metrics are MiniSom's, and the
committed data/susi_runs.jsonl.gz has the MiniSom corpus's schema and a real search's spread."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pytest
from minisom import MiniSom

from bench import susi_corpus as sc

CORPUS = Path(__file__).resolve().parents[2] / "data" / "susi_runs.jsonl.gz"
MINISOM_DATASETS = {"iris", "wine", "breast_cancer", "digits"}


def _small_data() -> np.ndarray:
    rng = np.random.default_rng(3)
    return sc._zscore(np.concatenate([rng.normal(c, 0.3, (15, 3)) for c in (0, 2, 4)]))


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "n_rows": 4,
        "n_columns": 5,
        "init_mode_unsupervised": "random_data",
        "train_mode_unsupervised": "online",
        "neighborhood_mode_unsupervised": "linear",
        "learn_mode_unsupervised": "min",
        "distance_metric": "euclidean",
        "learning_rate_start": 0.5,
        "learning_rate_end": 0.05,
        "nbh_dist_weight_mode": "pseudo-gaussian",
        "random_state": 11,
        "max_epochs": 3,
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"init_mode_unsupervised": "pca", "neighborhood_mode_unsupervised": "exp"},
        {"init_mode_unsupervised": "random", "nbh_dist_weight_mode": "mexican-hat"},
        {"learn_mode_unsupervised": "expsquare", "n_rows": 6, "n_columns": 3},
        {"train_mode_unsupervised": "batch", "max_epochs": 6},
        {"train_mode_unsupervised": "batch", "max_epochs": 5, "init_mode_unsupervised": "pca"},
        {
            "train_mode_unsupervised": "batch",
            "max_epochs": 5,
            "nbh_dist_weight_mode": "mexican-hat",
            "neighborhood_mode_unsupervised": "min",
        },
    ],
)
def test_the_stepwise_loop_is_susis_fit(overrides: dict[str, Any]) -> None:
    x = _small_data()
    config = _config(**overrides)
    online = config["train_mode_unsupervised"] == "online"
    config["n_iter_unsupervised"] = config["max_epochs"] * (len(x) if online else 1)

    som = sc.make_som(config)
    epochs = list(sc.train_epochs(som, x, config["max_epochs"]))
    reference = sc.make_som(config).fit(x)

    assert epochs == list(range(1, config["max_epochs"] + 1))
    assert np.array_equal(som.unsuper_som_, reference.unsuper_som_)
    assert np.array_equal(np.array(som.bmus_), np.array(reference.bmus_))


def test_the_loop_pauses_between_epochs_without_changing_the_training() -> None:
    """Measuring at a checkpoint must not touch the weights or the random stream."""
    x = _small_data()
    config = _config(max_epochs=4)
    config["n_iter_unsupervised"] = 4 * len(x)
    som = sc.make_som(config)
    for _ in sc.train_epochs(som, x, 4):
        sc.measure(som.unsuper_som_, x)
    assert np.array_equal(som.unsuper_som_, sc.make_som(config).fit(x).unsuper_som_)


def test_a_planned_online_run_decays_over_the_whole_run() -> None:
    data = sc.load_datasets()
    for _, name, config, _, _ in sc.plan(data, 3, 1):
        per_epoch = len(data[name]) if config["train_mode_unsupervised"] == "online" else 1
        assert config["n_iter_unsupervised"] == config["max_epochs"] * per_epoch


@pytest.mark.parametrize("seed", range(4))
def test_the_metrics_are_minisoms(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols, dim = int(rng.integers(3, 12)), int(rng.integers(3, 12)), int(rng.integers(2, 8))
    x = rng.normal(size=(int(rng.integers(50, 200)), dim))
    # Data-like weights near the samples, so that BMUs and second BMUs are spread over the map.
    weights = x[rng.integers(0, len(x), rows * cols)].reshape(rows, cols, dim)
    weights = weights + rng.normal(scale=0.3, size=weights.shape)
    som = MiniSom(rows, cols, dim, topology="rectangular", activation_distance="euclidean")
    som._weights = weights.copy()

    got = sc.measure(weights, x)

    assert got["mqe"] == pytest.approx(som.quantization_error(x), abs=1e-9)
    assert got["topographic_error"] == pytest.approx(som.topographic_error(x), abs=1e-9)
    dead = (som.activation_response(x) == 0).sum() / (rows * cols)
    assert got["dead_neuron_ratio"] == pytest.approx(dead, abs=1e-9)
    assert got["dead_neuron_ratio"] == pytest.approx(1 - len(som.win_map(x)) / (rows * cols))
    assert 0 < got["topographic_error"] < 1 and 0 < got["dead_neuron_ratio"] < 1


def test_diagonal_neighbours_are_adjacent_and_two_steps_are_not() -> None:
    weights = np.full((3, 3, 1), 100.0)
    weights[0, 0], weights[1, 1], weights[2, 2] = 0.0, 1.0, 3.0
    # 0.4: BMU (0,0), second (1,1); 0.6: the other way round. Both pairs are diagonal.
    assert sc.measure(weights, np.array([[0.4], [0.6]]))["topographic_error"] == 0.0
    weights[1, 1] = 100.0
    # Now the second BMU of 0.4 is (2,2): two diagonal steps away.
    assert sc.measure(weights, np.array([[0.4]]))["topographic_error"] == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e200])
def test_a_blown_up_map_has_null_metrics(bad: float) -> None:
    x = _small_data()
    weights = np.random.default_rng(0).normal(size=(4, 4, x.shape[1]))
    # 1e200 is finite, but its distances overflow: the BMUs would be garbage.
    weights[2, 1, :] = bad
    assert sc.measure(weights, x) == dict.fromkeys(sc.METRICS)


def test_a_diverging_run_is_null_from_then_on() -> None:
    x = _small_data()
    config = _config(
        init_mode_unsupervised="random_data",
        nbh_dist_weight_mode="mexican-hat",
        learning_rate_start=1.0,
        learning_rate_end=0.9,
        learn_mode_unsupervised="linear",
        neighborhood_mode_unsupervised="min",
        max_epochs=400,
    )
    config["n_iter_unsupervised"] = 400 * len(x)
    run = sc.run_one("t", "small", x, config, [1, 2, 50, 399, 400], {"base_seed": 0})
    assert run["diverged"] is True
    assert run["final"] == dict.fromkeys(sc.METRICS)
    mqes = [c["mqe"] for c in run["checkpoints"]]
    assert [c["epoch"] for c in run["checkpoints"]] == [1, 2, 50, 399, 400]
    first_null = mqes.index(None)
    assert first_null > 0, "the map was fine before it blew up"
    assert all(m is None for m in mqes[first_null:])
    assert json.loads(json.dumps(run))["final"]["mqe"] is None


def test_schedules_are_irregular_sorted_distinct_and_end_at_max_epochs() -> None:
    rng = np.random.default_rng(5)
    schedules = []
    for _ in range(300):
        max_epochs = int(rng.integers(10, 251))
        schedule = sc.draw_schedule(rng, max_epochs)
        assert schedule == sorted(set(schedule))
        assert schedule[-1] == max_epochs and schedule[0] >= 1
        assert 4 <= len(schedule) <= 30
        schedules.append(schedule)
    assert len({len(s) for s in schedules}) > 15
    assert any(s[0] != 1 for s in schedules) and any(s[0] == 1 for s in schedules)
    uneven = [s for s in schedules if len(set(np.diff(s[:-1]).tolist())) > 1]
    assert len(uneven) > 100


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    if not CORPUS.exists():
        pytest.fail(f"{CORPUS} is missing: python bench/susi_corpus.py --out {CORPUS}")
    with gzip.open(CORPUS, "rt") as f:
        return [json.loads(line) for line in f]


def test_the_corpus_file_is_gzip_without_a_timestamp_or_name() -> None:
    head = CORPUS.read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0"
    assert head[3] & 0x08 == 0


def test_the_corpus_has_the_minisom_schema(corpus: list[dict[str, Any]]) -> None:
    keys = {"run_id", "source", "dataset", "config", "max_epochs", "checkpoints", "final"}
    keys |= {"total_wall_s", "diverged"}
    assert len({r["run_id"] for r in corpus}) == len(corpus)
    for run in corpus:
        assert keys <= run.keys() and run["source"] == "susi"
        cps = run["checkpoints"]
        epochs = [c["epoch"] for c in cps]
        assert epochs == sorted(set(epochs)) and epochs[-1] == run["max_epochs"]
        assert 4 <= len(cps) <= 30
        assert all(c.keys() == {"epoch", *sc.METRICS, "wall_s"} for c in cps)
        assert run["final"] == {k: cps[-1][k] for k in sc.METRICS}
        walls = [c["wall_s"] for c in cps]
        assert walls == sorted(walls) and run["total_wall_s"] >= walls[-1]
        nulls = [c["mqe"] is None for c in cps]
        assert run["diverged"] == any(nulls)
        if run["diverged"]:
            assert all(nulls[nulls.index(True) :])
        for c in cps:
            if c["mqe"] is not None:
                assert c["mqe"] >= 0 and 0 <= c["topographic_error"] <= 1
                assert 0 <= c["dead_neuron_ratio"] < 1
        config = run["config"]
        assert config["max_epochs"] == run["max_epochs"]
        sc.make_som(config)  # every config is a valid set of SOMClustering arguments


def test_the_corpus_covers_ten_new_data_sets_about_evenly(corpus: list[dict[str, Any]]) -> None:
    per_dataset = Counter(r["dataset"] for r in corpus)
    assert len(per_dataset) == 10 and not MINISOM_DATASETS & per_dataset.keys()
    assert all(35 <= n <= 45 for n in per_dataset.values())
    assert set(per_dataset) == set(sc.load_datasets())


def test_the_corpus_runs_differ_like_a_real_search(corpus: list[dict[str, Any]]) -> None:
    diverged = sum(r["diverged"] for r in corpus)
    assert 0 < diverged < len(corpus) / 4
    assert len({r["config"]["train_mode_unsupervised"] for r in corpus}) == 2
    for dataset in {r["dataset"] for r in corpus}:
        finals = [
            r["final"]["mqe"] for r in corpus if r["dataset"] == dataset and not r["diverged"]
        ]
        assert max(finals) > 2 * min(finals), dataset
        assert median(finals) > 0 and all(math.isfinite(m) for m in finals)
    worse = 0
    for run in corpus:
        mqes = [c["mqe"] for c in run["checkpoints"] if c["mqe"] is not None]
        worse += bool(mqes) and mqes[-1] > 1.05 * min(mqes)
    assert worse > 0
