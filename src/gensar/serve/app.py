"""HTTP service: FastAPI over the onnxruntime `Runtime`, with a micro-batcher.

    POST /recommend  {"history": [...], "k": 10, "user_id": "u1"}              -> top-k items
    POST /search     {"query": "desk lamp", "history": [...], "k": 10}          -> top-k items
    GET  /health     liveness + what is loaded (providers, item count)
    GET  /version    data / identifier / model versions of the served export (from its meta.json)

A history is a list of events, oldest first; an event is an item id string (a recommendation click)
or {"item_id": ..., "behavior": "rec"|"search", "query": ...}. A user the service has never seen is
served from the history given (cold start; an empty history is fine). `user_id` is only echoed.

Errors are 4xx with a `detail` message that says what is wrong: 400 malformed JSON, 422 a field of
the wrong type, an empty query, k out of [1, serve.max_k], unknown item ids in a history.

Concurrent requests are decoded together: the batcher collects up to `serve.max_batch` requests,
waiting at most `serve.max_wait_ms` after the first, and runs one beam search per task in a worker
thread (the event loop keeps accepting requests meanwhile).

    uvicorn: gensar serve --model models/onnx   (or create_app(...) with any ASGI server)
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gensar.config import ServeConfig
from gensar.serve.runtime import Runtime, UnknownItemsError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# request / response bodies
# --------------------------------------------------------------------------------------------
class Event(BaseModel):
    item_id: str
    behavior: Literal["rec", "search"] = "rec"
    query: str | None = None


class RecommendRequest(BaseModel):
    history: list[str | Event] = Field(default_factory=list)
    k: int = 10
    user_id: str | None = None


class SearchRequest(RecommendRequest):
    query: str


class Item(BaseModel):
    item_id: str
    title: str
    score: float


class Response(BaseModel):
    items: list[Item]
    user_id: str | None = None
    model_version: str
    latency_ms: float


def as_events(history: list[str | Event]) -> list[tuple]:
    """API history -> prompt events (behavior, item_id, query)."""
    return [("rec", ev, None) if isinstance(ev, str) else (ev.behavior, ev.item_id, ev.query) for ev in history]


# --------------------------------------------------------------------------------------------
# micro-batching
# --------------------------------------------------------------------------------------------
class MicroBatcher:
    """Collects concurrent requests and decodes them as one batch per task (rec / search)."""

    def __init__(self, runtime: Runtime, max_batch: int = 16, max_wait_ms: float = 2.0):
        self.runtime, self.max_batch, self.max_wait = runtime, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gensar-decode")
        self.task: asyncio.Task | None = None
        self.batches = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, kind: str, query: str | None, events: list[tuple], k: int):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((kind, query, events, k, future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            for kind in ("rec", "search"):
                group = [r for r in batch if r[0] == kind]
                if group:
                    await self._run(loop, kind, group)

    async def _run(self, loop, kind: str, group: list) -> None:
        histories = [r[2] for r in group]
        ks = [r[3] for r in group]
        try:
            if kind == "rec":
                results = await loop.run_in_executor(self.pool, self.runtime.recommend_batch, histories, ks)
            else:
                queries = [r[1] for r in group]
                results = await loop.run_in_executor(self.pool, self.runtime.search_batch, queries, histories, ks)
            self.batches += 1
            for r, hits in zip(group, results):
                if not r[4].done():
                    r[4].set_result(hits)
        except Exception as e:
            logger.exception("serve: a %s batch of %d failed", kind, len(group))
            for r in group:
                if not r[4].done():
                    r[4].set_exception(e)


# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------
def create_app(export_dir: str | Path = "models/onnx", cfg: ServeConfig | None = None,
               runtime: Runtime | None = None) -> FastAPI:
    """The service for one export folder (a model version under `models/`)."""
    cfg = cfg or ServeConfig()
    if cfg.max_k > cfg.beams:
        raise ValueError(f"serve.max_k ({cfg.max_k}) must not exceed serve.beams ({cfg.beams})")
    runtime = runtime or Runtime.load(export_dir, beams=cfg.beams, normalize=cfg.normalize,
                                      provider=cfg.provider, threads=cfg.threads, spin=cfg.spin)
    batcher = MicroBatcher(runtime, cfg.max_batch, cfg.max_wait_ms)
    versions = runtime.meta.get("versions", {})
    model_version = str(versions.get("model", "unknown"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        logger.info("serve: %s ready (model %s, %d items, providers %s)", export_dir, model_version,
                    len(runtime.ids), runtime.providers)
        yield
        await batcher.stop()

    app = FastAPI(title="GenSAR", version=str(runtime.meta.get("format", "")), lifespan=lifespan)
    app.state.runtime, app.state.batcher = runtime, batcher

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            msg = e.get("ctx", {}).get("error", e.get("msg", ""))
            return JSONResponse(status_code=400, content={"detail": f"malformed JSON body: {msg}"})
        parts = []
        for e in errors:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return JSONResponse(status_code=422, content={"detail": "; ".join(parts)})

    def check(req: RecommendRequest) -> list[tuple]:
        if not 1 <= req.k <= cfg.max_k:
            raise HTTPException(422, f"k must be between 1 and {cfg.max_k}, got {req.k}")
        events = as_events(req.history)
        try:
            runtime.check_history(events)
        except UnknownItemsError as e:
            raise HTTPException(422, str(e)) from None
        return events

    async def answer(kind: str, req: RecommendRequest, query: str | None) -> Response:
        t0 = time.perf_counter()
        hits = await batcher.submit(kind, query, check(req), req.k)
        return Response(items=[Item(item_id=h.item_id, title=h.title, score=h.score) for h in hits],
                        user_id=req.user_id, model_version=model_version,
                        latency_ms=round(1e3 * (time.perf_counter() - t0), 3))

    @app.post("/recommend", response_model=Response)
    async def recommend(req: RecommendRequest) -> Response:
        return await answer("rec", req, None)

    @app.post("/search", response_model=Response)
    async def search(req: SearchRequest) -> Response:
        if not req.query.strip():
            raise HTTPException(422, "query must not be empty")
        return await answer("search", req, req.query)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "items": len(runtime.ids), "providers": runtime.providers,
                "beams": runtime.beams, "normalize": runtime.normalize, "batches": batcher.batches}

    @app.get("/version")
    async def version() -> dict:
        meta = runtime.meta
        return {"data": versions.get("data"), "identifiers": versions.get("identifiers"),
                "model": versions.get("model"), "model_dir": versions.get("model_dir"),
                "export": str(export_dir), "format": meta.get("format"), "quantized": meta.get("quantized"),
                "n_items": meta.get("n_items")}

    return app
