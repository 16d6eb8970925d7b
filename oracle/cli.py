"""The `oracle` command: serve, migrate, import, and the model's jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from core.db import DEFAULT_DATABASE_URL, redacted
from core.errors import SchemaMismatch

app = typer.Typer(
    help="The Oracle: tells each SOM training whether it is worth finishing.",
    no_args_is_help=True,
    add_completion=False,
)

DatabaseOption = Annotated[
    str,
    typer.Option(envvar="DATABASE_URL", help="SQLAlchemy URL; postgresql://... or sqlite:///..."),
]


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT")] = 8000,
    workers: Annotated[int, typer.Option(envvar="WEB_CONCURRENCY", min=1)] = 1,
    database_url: DatabaseOption = DEFAULT_DATABASE_URL,
) -> None:
    """Serve the API, first bringing the database's schema to head (ORACLE_MIGRATE_ON_START)."""
    import uvicorn

    from service.settings import Settings, is_loopback

    os.environ["DATABASE_URL"] = database_url
    settings = Settings()
    if not (settings.tokens or settings.tokens_file) and not is_loopback(host):
        typer.echo(
            f"refusing to serve on {host} without tokens: set ORACLE_TOKENS "
            "(e.g. 'worker:…,admin:…,reader:…') or ORACLE_TOKENS_FILE, or bind to 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)
    if not (settings.tokens or settings.tokens_file):
        typer.echo(f"no tokens configured: authentication is off, serving on {host} only", err=True)
    _at_head(database_url, migrate=settings.migrate_on_start)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes: each writes its metrics to files that /metrics adds up.
        metrics_dir = Path("var") / f"prometheus-{os.getpid()}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


def _at_head(database_url: str, *, migrate: bool) -> None:
    """The schema at head (migrated if `migrate`), or a one-line refusal and exit code 2: a
    schema ahead of the code, behind it with migrating off, or a database out of reach."""
    from sqlalchemy.exc import OperationalError

    from core import schema

    try:
        schema.prepare(database_url, migrate=migrate)
    except SchemaMismatch as e:
        typer.echo(f"{redacted(database_url)}: {e}", err=True)
        raise typer.Exit(2) from None
    except OperationalError as e:  # unreachable, refused, locked past the wait: say so, briefly
        first = (str(e.orig or e).strip().splitlines() or [type(e).__name__])[0]
        typer.echo(f"{redacted(database_url)}: the database cannot be used: {first}", err=True)
        raise typer.Exit(2) from None


@app.command()
def migrate(database_url: DatabaseOption = DEFAULT_DATABASE_URL) -> None:
    """`alembic upgrade head` on DATABASE_URL, under the lock that `oracle serve` takes too."""
    _at_head(database_url, migrate=True)
    typer.echo(f"migrated {redacted(database_url)} to head")


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(exists=True, help="JSONL, JSON, CSV or folders")],
    study: Annotated[
        str | None, typer.Option(help="Study for runs that name none (default: by data set)")
    ] = None,
    database_url: DatabaseOption = DEFAULT_DATABASE_URL,
) -> None:
    """Load finished histories: JSON lines of runs, the seed's JSON histories or dataset CSV."""
    from service.importer import import_paths

    _at_head(database_url, migrate=True)
    summary = import_paths(database_url, files, default_study=study)
    typer.echo(summary.describe())
    if summary.errors:
        raise typer.Exit(1)


ModelName = Annotated[str, typer.Option("--model", help="standard, bidirectional, lite, attention")]


@app.command()
def train(
    model: ModelName = "lite",
    epochs: Annotated[
        int, typer.Option(min=1, help="Training epochs (early stopping may end sooner)")
    ] = 200,
    dataset: Annotated[
        Path | None, typer.Option(exists=True, help="Train from a file (JSONL or the seed's CSV)")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Retrain on a schedule; never exits")] = False,
    interval: Annotated[
        float, typer.Option(min=1, help="--watch: retrain at least this often (s)")
    ] = 3600.0,
    min_new_runs: Annotated[
        int, typer.Option(min=1, help="--watch: retrain when this many new runs finished")
    ] = 50,
    seed: int = 7,
    output: Annotated[Path | None, typer.Option(help="Also write the bundle here")] = None,
    database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None,
    warm_start: Annotated[
        bool, typer.Option(help="Fine-tune the active model when it has this architecture")
    ] = True,
    censored: Annotated[
        bool, typer.Option(help="Also learn from stopped runs' histories (censored finals)")
    ] = False,
) -> None:
    """Retrain the model, evaluate it, and publish it if it passes the gate."""
    from training import commands

    if database_url is None and dataset is None:
        database_url = DEFAULT_DATABASE_URL
    summary = commands.train(
        model=model,
        epochs=epochs,
        dataset=str(dataset) if dataset else None,
        database_url=database_url,
        watch=watch,
        interval=interval,
        min_new_runs=min_new_runs,
        seed=seed,
        output=str(output) if output else None,
        warm_start=warm_start,
        censored=censored,
    )
    if "report" in summary:
        typer.echo(summary["report"])
    for key in ("version", "bundle", "published", "gate", "seconds", "retrainings"):
        if key in summary:
            typer.echo(f"{key}: {summary[key]}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", help="A version, 'active', 'default' or a FILE")],
    dataset: Annotated[Path, typer.Option(exists=True, help="JSONL runs or the seed's CSV")],
    held_out_only: Annotated[
        bool, typer.Option(help="Only the runs the model's manifest lists as its test split")
    ] = False,
    database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None,
) -> None:
    """MAE/RMSE per target and by progress, calibration, and the decision backtest."""
    from training import commands

    result = commands.evaluate(
        model, str(dataset), database_url=database_url, held_out_only=held_out_only
    )
    typer.echo(result["report"])


@app.command()
def predict(
    sequence: Annotated[Path, typer.Option(exists=True, help="The seed's partial-sequence JSON")],
    max_epochs: Annotated[int | None, typer.Option(min=1)] = None,
    model: Annotated[
        str | None, typer.Option(help="A version, 'active', 'default' or a FILE")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Final-score threshold: adds the recommendation")
    ] = None,
    confidence: float = 0.9,
    database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None,
) -> None:
    """Predicted final metrics (and, with --threshold, continue/stop) for one partial history."""
    import json

    from training import commands

    result = commands.predict(
        str(sequence),
        max_epochs=max_epochs,
        model=model,
        database_url=database_url,
        threshold=threshold,
        confidence=confidence,
    )
    typer.echo(json.dumps(result, indent=2))


@app.command()
def worker(
    runs: Annotated[int, typer.Option(min=1, help="How many maps to train")] = 8,
    parallel: Annotated[int, typer.Option(min=1, help="Maps trained at once")] = 2,
    url: Annotated[str, typer.Option(envvar="ORACLE_URL")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="ORACLE_TOKEN")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the configurations")] = 0,
    study_prefix: Annotated[str, typer.Option(help="Studies are PREFIX-DATASET")] = "worker",
    datasets: Annotated[str, typer.Option(help="Comma-separated")] = (
        "iris,wine,breast_cancer,digits"
    ),
    min_epochs: Annotated[int, typer.Option(min=1)] = 20,
    max_epochs: Annotated[int, typer.Option(min=1)] = 300,
) -> None:
    """Train real SOMs (MiniSom) with EA-style random configurations; report to the Oracle."""
    import logging

    from oracle.worker import run_workers, summary

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    try:
        outcomes = run_workers(
            url,
            token,
            runs=runs,
            parallel=parallel,
            seed=seed,
            study_prefix=study_prefix,
            datasets=tuple(d.strip() for d in datasets.split(",") if d.strip()),
            min_epochs=min_epochs,
            max_epochs=max_epochs,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(summary(outcomes))


if __name__ == "__main__":
    app()
