"""The application factory: `uvicorn service.main:create_app --factory`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import Session
from threadpoolctl import threadpool_limits

from core import bundle, registry
from core.db import Database, redacted
from oracle import __version__
from service import errors, logs, metrics
from service.api import dashboard, health, models, predict, runs, studies
from service.auth import TokenTable
from service.limits import BodyLimit
from service.recorder import Recorder
from service.reference_cache import ReferenceCache
from service.serving.holder import ModelHolder
from service.serving.loader import load_predictor
from service.serving.reloader import Reloader
from service.settings import Settings
from service.state import AppState

log = structlog.get_logger()


def _install_default_model(session: Session) -> str | None:
    artifact = bundle.DEFAULT_PATH.read_bytes()
    return registry.install_default(session, artifact, bundle.load(artifact).manifest)


# Allocations of tracked objects between two collections of the youngest generation (CPython's
# default is 700: a collection every few requests under load).
GC_YOUNG_THRESHOLD = 10_000


def _tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the request path.

    Nearly all of the process's heap is built at start-up and lives as long as the process
    (modules, routes, pydantic validators, compiled SQL, the model). Without this, every full
    collection walked all of it while requests waited, and the youngest generation filled every
    700 allocations. On the replay of 64 workers (SQLite) it moved decisions/s by about +25% and
    the p99 from ~70 to ~30 ms (bench/RESULTS-service.md). Objects made later are collected as
    usual.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, each into the app's own table, as `include_router` did until
    FastAPI 0.16x.

    There it now adds one entry that wraps the router and matches each request twice (once to
    pick the entry, again inside it, swapping scope keys around each route it tries): 12-23 µs
    a checkpoint (medians of 30 x 2,000 calls in process, *one-off*), of the ~600 µs the
    server spends on one under load. Our routers hold no settings of their own that an include
    would add: their routes already carry the prefix, tags, route class and responses.
    """
    if router.dependencies or router.callbacks or router.on_startup or router.on_shutdown:
        raise ValueError(f"router {router.prefix!r} has settings only include_router applies")
    app.router.routes.extend(router.routes)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_format)
    tokens = TokenTable.load(settings.tokens, settings.tokens_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The model's matmuls are tiny (a batch of runs x 64 units): BLAS threads only spin
        # on the other core, which the load and Postgres need. Measured on the 64-worker
        # replay with the oracle deciding: 529-713 us of CPU per decision with OpenBLAS's
        # threads, 367 with one.
        blas = threadpool_limits(limits=1, user_api="blas")
        db = Database.connect(
            settings.database_url, pool_size=settings.db_pool_size, async_writes=True
        )
        holder = ModelHolder()
        references = ReferenceCache(settings.reference_refresh_s)
        state = AppState(
            settings=settings,
            db=db,
            tokens=tokens,
            references=references,
            models=holder,
            recorder=Recorder(db, references, holder),
        )
        app.state.oracle = state
        reloader = Reloader(db.reads, holder, load_predictor, settings.model_poll_s)
        if settings.default_model:
            try:
                installed = await state.write(_install_default_model)
                if installed:
                    log.info("default_model_activated", version=installed)
            except Exception as e:  # serve with the median rule; an admin can activate later
                log.warning("default_model_not_installed", error=str(e))
        try:
            await asyncio.to_thread(reloader.check_once)
        except Exception as e:  # start serving with the fallbacks; the poller retries
            log.warning("model_poll_failed", error=str(e))
        poller = asyncio.create_task(reloader.run())
        metrics.set_active_model(holder.version)
        if settings.gc_freeze:
            _tune_garbage_collector()
        log.info(
            "started",
            version=__version__,
            database=redacted(settings.database_url),
            backend=db.backend,
            model_version=holder.version,
            policy="oracle" if holder.version else "median (no active model)",
            auth="tokens" if tokens.enabled else "disabled (loopback only)",
        )
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            state.recorder.close()
            await db.aclose()
            blas.restore_original_limits()

    app = FastAPI(
        title="The Oracle",
        version=__version__,
        summary="Tells each SOM training, at every checkpoint, whether it is worth finishing.",
        lifespan=lifespan,
    )
    errors.install(app)
    # The workers' routes first, FastAPI's own documentation routes last: a request is matched
    # against the routes in order, one regex each, and each miss ahead of the checkpoint route
    # costs every checkpoint ~2 µs.
    for router in (
        runs.router,
        studies.router,
        predict.router,
        models.router,
        health.router,
        dashboard.router,
    ):
        _add_routes(app, router)
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes.sort(key=lambda route: getattr(route, "path", None) in docs)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(logs.RequestContext)
    return app
