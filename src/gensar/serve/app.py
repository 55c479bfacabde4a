"""HTTP service: FastAPI over the onnxruntime `Runtime`, with a micro-batcher.

    POST /recommend  {"history": [...], "k": 10, "user_id": "u1"}              -> top-k items
    POST /search     {"query": "desk lamp", "history": [...], "k": 10}          -> top-k items
    POST /suggest    {"history": [...]}                                         -> the query expected next
    GET  /health     liveness + what is loaded (providers, item count)
    GET  /version    data / identifier / model versions of the served export (from its meta.json)

A history is a list of events, oldest first; an event is an item id string (a recommendation click)
or {"item_id": ..., "behavior": "rec"|"search", "query": ...}. A user the service has never seen is
served from the history given (cold start; an empty history is fine). `user_id` is only echoed.

Errors are 4xx with a `detail` message that says what is wrong: 400 malformed JSON, 413 a body larger
than serve.max_body_bytes, 415 a body that is not JSON, 422 a field of the wrong type (strict: `k: true`
is not 1), a string that is not valid Unicode (a lone surrogate), an empty query, k out of
[1, serve.max_k], a history longer than serve.max_history or a query longer than
serve.max_query_chars, unknown item ids in a history. A request that fails while decoding gets a 500
of its own: the batcher retries the other requests of its batch one by one.

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
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field

from gensar.config import ServeConfig
from gensar.serve.runtime import Runtime, UnknownItemsError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# request / response bodies
# --------------------------------------------------------------------------------------------
def _valid_text(value: str) -> str:
    """JSON may carry strings that are not text (a lone surrogate such as "\\ud800"): refuse them here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_valid_text)]


class Event(BaseModel):
    item_id: Text
    behavior: Literal["rec", "search"] = "rec"
    query: Text | None = None


class RecommendRequest(BaseModel):
    history: list[Text | Event] = Field(default_factory=list)
    k: int = Field(10, strict=True)   # `"k": true` or `"k": "5"` is a 422, not 1 or 5
    user_id: Text | None = None


class SearchRequest(RecommendRequest):
    query: Text


class Item(BaseModel):
    item_id: str
    title: str
    score: float


class SuggestResponse(BaseModel):
    query: str                      # the next-query task's greedy output ("" if the model has none)
    user_id: str | None = None
    model_version: str
    latency_ms: float


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
            for kind in ("rec", "search", "suggest"):
                group = [r for r in batch if r[0] == kind]
                if group:
                    await self._run(loop, kind, group)

    def _decode(self, kind: str, group: list) -> list:
        histories, ks = [r[2] for r in group], [r[3] for r in group]
        if kind == "rec":
            return self.runtime.recommend_batch(histories, ks)
        if kind == "suggest":
            return self.runtime.suggest_batch(histories)
        return self.runtime.search_batch([r[1] for r in group], histories, ks)

    async def _run(self, loop, kind: str, group: list) -> None:
        """Decode `group` as one batch; if that fails, each request alone, so that a request the
        runtime cannot serve fails by itself and never takes the others of its batch with it."""
        try:
            results = await loop.run_in_executor(self.pool, self._decode, kind, group)
            self.batches += 1
        except Exception as e:
            if len(group) > 1:
                logger.warning("serve: a %s batch of %d failed (%s); decoding its requests one by one",
                               kind, len(group), type(e).__name__)
                for r in group:
                    await self._run(loop, kind, [r])
                return
            logger.exception("serve: a %s request failed", kind)
            if not group[0][4].done():
                group[0][4].set_exception(RequestFailed(f"the {kind} request could not be decoded ({type(e).__name__})"))
            return
        for r, hits in zip(group, results):
            if not r[4].done():
                r[4].set_result(hits)


class RequestFailed(RuntimeError):
    """The runtime could not serve one request (the others of its batch were served)."""


class BodyLimits:
    """ASGI middleware: a POST body must be JSON (else 415) of at most `max_bytes` (else 413).

    The size is checked on the Content-Length header and again while the body streams in (chunked
    uploads have no header), before anything parses it; bounded bodies also bound the time the
    event loop spends in JSON parsing (about 2 ms for the default 256 kB).
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json" and not ctype.endswith(b"+json"):
            shown = ctype.decode("latin-1") or "none"
            return await _reply(send, 415, f"the body must be JSON (Content-Type: application/json), got {shown}")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _reply(send, 413, f"the body is {int(length):,} bytes, more than serve.max_body_bytes "
                                           f"= {self.max_bytes:,}")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"the body is more than serve.max_body_bytes = {self.max_bytes:,} bytes")
            return message

        return await self.app(scope, limited, send)


async def _reply(send, status: int, detail: str) -> None:
    await JSONResponse(status_code=status, content={"detail": detail})({"type": "http"}, None, send)


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
    app.add_middleware(BodyLimits, max_bytes=cfg.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            msg = e.get("ctx", {}).get("error", e.get("msg", ""))
            return JSONResponse(status_code=400, content={"detail": f"malformed JSON body: {msg}"})
        parts = []
        for e in errors:
            # pydantic names the branches of `str | Event` in the location; a user wants the field
            where = ".".join(str(x) for x in e.get("loc", ())
                             if x not in ("body", "Event") and "function-after[" not in str(x)) or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return JSONResponse(status_code=422, content={"detail": "; ".join(parts)})

    def check(req: RecommendRequest, query: str | None = None) -> list[tuple]:
        if not 1 <= req.k <= cfg.max_k:
            raise HTTPException(422, f"k must be between 1 and {cfg.max_k}, got {req.k}")
        if len(req.history) > cfg.max_history:
            raise HTTPException(422, f"history holds {len(req.history):,} events, more than serve.max_history "
                                     f"= {cfg.max_history} (the model reads the last few; send those)")
        events = as_events(req.history)
        long = [q for q in [query] + [e[2] for e in events] if q is not None and len(q) > cfg.max_query_chars]
        if long:
            raise HTTPException(422, f"a query of {len(long[0]):,} characters is longer than serve.max_query_chars "
                                     f"= {cfg.max_query_chars}")
        try:
            runtime.check_history(events)
        except UnknownItemsError as e:
            raise HTTPException(422, str(e)) from None
        return events

    async def decode(kind: str, req: RecommendRequest, query: str | None = None):
        """Check the request and decode it through the batcher: (its result, milliseconds)."""
        t0 = time.perf_counter()
        events = check(req, query)
        try:
            out = await batcher.submit(kind, query, events, req.k)
        except RequestFailed as e:
            raise HTTPException(500, str(e)) from None
        return out, round(1e3 * (time.perf_counter() - t0), 3)

    async def answer(kind: str, req: RecommendRequest, query: str | None) -> Response:
        hits, ms = await decode(kind, req, query)
        return Response(items=[Item(item_id=h.item_id, title=h.title, score=h.score) for h in hits],
                        user_id=req.user_id, model_version=model_version, latency_ms=ms)

    @app.post("/recommend", response_model=Response)
    async def recommend(req: RecommendRequest) -> Response:
        return await answer("rec", req, None)

    @app.post("/search", response_model=Response)
    async def search(req: SearchRequest) -> Response:
        if not req.query.strip():
            raise HTTPException(422, "query must not be empty")
        return await answer("search", req, req.query)

    @app.post("/suggest", response_model=SuggestResponse)
    async def suggest(req: RecommendRequest) -> SuggestResponse:
        text, ms = await decode("suggest", req)
        return SuggestResponse(query=text, user_id=req.user_id, model_version=model_version, latency_ms=ms)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model_version": model_version, "versions": versions,
                "items": len(runtime.ids), "providers": runtime.providers,
                "beams": runtime.beams, "normalize": runtime.normalize, "batches": batcher.batches}

    @app.get("/version")
    async def version() -> dict:
        meta = runtime.meta
        return {"data": versions.get("data"), "identifiers": versions.get("identifiers"),
                "model": versions.get("model"), "model_dir": versions.get("model_dir"),
                "export": str(export_dir), "format": meta.get("format"), "quantized": meta.get("quantized"),
                "n_items": meta.get("n_items")}

    return app
