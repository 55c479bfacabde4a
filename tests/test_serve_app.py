"""The HTTP service on a tiny exported model: endpoints, 4xx messages, cold start, and a bounded
concurrent load test against a real uvicorn server on loopback."""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import WORDS, exported_world
from fastapi.testclient import TestClient

from gensar.config import ServeConfig
from gensar.serve.app import create_app
from gensar.serve.runtime import Runtime

CFG = ServeConfig(beams=10, max_k=10, max_batch=8, max_wait_ms=5.0)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return exported_world(tmp_path_factory.mktemp("app"), n_items=80)


@pytest.fixture(scope="module")
def client(export):
    with TestClient(create_app(export["out"], CFG)) as c:
        yield c


def test_recommend_search_health_version(client, export):
    items = export["ids"].item_ids
    r = client.post("/recommend", json={"user_id": "u1", "history": [items[0], items[1]], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["user_id"] == "u1"
    assert all(set(h) == {"item_id", "title", "score"} and h["item_id"] in export["ids"] for h in body["items"])
    scores = [h["score"] for h in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # the service answers what the runtime answers
    rt = client.app.state.runtime
    assert [h["item_id"] for h in body["items"]] == [h.item_id for h in rt.recommend(
        [("rec", items[0], None), ("rec", items[1], None)], 5)]
    history = [{"item_id": items[2], "behavior": "search", "query": "desk lamp"}, items[3]]
    r = client.post("/search", json={"query": "stapler ink", "history": history, "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert client.get("/health").json()["status"] == "ok"
    version = client.get("/version").json()
    assert version["data"] == "tiny-test" and version["model"] == body["model_version"]
    assert version["identifiers"] and version["n_items"] == len(export["ids"])


def test_cold_start_user_is_served(client):
    r = client.post("/recommend", json={"user_id": "never-seen", "history": [], "k": 4})
    assert r.status_code == 200 and len(r.json()["items"]) == 4
    r = client.post("/search", json={"query": "marker", "k": 2})           # no history field at all
    assert r.status_code == 200 and len(r.json()["items"]) == 2


@pytest.mark.parametrize("path, body, status, message", [
    ("/recommend", '{"history": ["it001", ', 400, "malformed JSON"),
    ("/recommend", '[1, 2]', 422, "valid dictionary"),
    ("/recommend", '{"history": ["it001"], "k": 0}', 422, "k must be between 1 and 10, got 0"),
    ("/recommend", '{"history": ["it001"], "k": 50}', 422, "k must be between 1 and 10, got 50"),
    ("/recommend", '{"history": ["it001"], "k": "many"}', 422, "k: Input should be a valid integer"),
    ("/recommend", '{"history": ["it001", "ghost-7"]}', 422, "unknown item ids in history: 'ghost-7'"),
    ("/search", '{"query": "   ", "history": []}', 422, "query must not be empty"),
    ("/search", '{"history": []}', 422, "query: Field required"),
    ("/search", '{"query": "pen", "history": [{"item_id": "it001", "behavior": "buy"}]}', 422, "behavior"),
    ("/recommend", '{"history": ["it001"], "k": true}', 422, "k: Input should be a valid integer"),
    ("/recommend", '{"history": ["it001"], "k": "5"}', 422, "k: Input should be a valid integer"),
    ("/search", '{"query": "\\ud800 lamp"}', 422, "query: Value error, is not valid Unicode text"),
    ("/search", '{"query": "pen", "history": [{"item_id": "it001", "behavior": "search", "query": "\\udfff"}]}',
     422, "is not valid Unicode text"),
    ("/recommend", '{"history": ["it\\ud800"]}', 422, "is not valid Unicode text"),
    ("/recommend", '{"history": [' + ", ".join(['"it001"'] * 201) + "]}", 422,
     "history holds 201 events, more than serve.max_history = 200"),
    ("/search", '{"query": "' + "lamp " * 101 + '"}', 422,
     "a query of 505 characters is longer than serve.max_query_chars = 500"),
])
def test_bad_requests_get_clear_4xx(client, path, body, status, message):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_suggest_endpoint_and_cli_answer_what_the_runtime_answers(client, export, capsys):
    from gensar.cli import main

    items = export["ids"].item_ids
    body = {"user_id": "u9", "history": [items[0], {"item_id": items[1], "behavior": "search", "query": "desk lamp"}]}
    r = client.post("/suggest", json=body)
    assert r.status_code == 200, r.text
    want = client.app.state.runtime.suggest([("rec", items[0], None), ("search", items[1], "desk lamp")])
    assert r.json()["query"] == want and r.json()["user_id"] == "u9"
    assert client.post("/suggest", json={"history": ["ghost-1"]}).status_code == 422
    assert main(["suggest", "--model", str(export["out"]), "--history", items[0], f"{items[1]}=desk lamp"]) == 0
    assert capsys.readouterr().out.strip() == want


def test_body_size_and_content_type_limits(client):
    big = '{"query": "pen", "history": [], "pad": "' + "x" * 300_000 + '"}'
    r = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "more than serve.max_body_bytes = 262,144" in r.json()["detail"]

    def chunks():                                   # no Content-Length: the limit holds while streaming
        yield b'{"query": "pen", "pad": "'
        for _ in range(40):
            yield b"x" * 10_000
        yield b'"}'
    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = client.post("/search", content='{"query": "pen"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "must be JSON" in r.json()["detail"]
    assert client.post("/search", content='{"query": "pen"}',
                       headers={"content-type": "application/json; charset=utf-8"}).status_code == 200
    health = client.get("/health").json()
    assert health["model_version"] == health["versions"]["model"] != "unknown"


class Faulty(Runtime):
    """The real runtime with one injected fault: a search for "poison" raises while decoding."""

    def search_batch(self, queries, histories, ks):
        if "poison" in queries:
            raise RuntimeError("cannot decode")
        return super().search_batch(queries, histories, ks)


def test_a_request_that_fails_in_the_runtime_fails_alone(export):
    """A request the runtime cannot decode (fault injected: a query that raises) is batched with good
    ones: it gets a 500 of its own, every other request of the batch its answer."""
    import asyncio

    runtime = Faulty.load(export["out"], beams=CFG.beams)
    app = create_app(export["out"], ServeConfig(beams=10, max_k=10, max_batch=8, max_wait_ms=200.0), runtime=runtime)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            queries = ["desk lamp", "poison", "stapler", "ink pen", "poison", "marker"]
            return await asyncio.gather(*[c.post("/search", json={"query": q, "k": 3}) for q in queries]), \
                app.state.batcher.batches

    responses, batches = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 500, 200, 200, 500, 200]
    assert all(len(r.json()["items"]) == 3 for r in responses if r.status_code == 200)
    assert "could not be decoded" in responses[1].json()["detail"]
    assert batches == 4   # the failed batch of 6 was retried one by one: 4 good requests decoded alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_concurrent_load_on_loopback_has_no_errors(export):
    """16 concurrent clients, 96 good requests and 32 bad ones mixed in (a lone surrogate: 422; a query
    the runtime fails on: 500), bounded to 120 s: every good answer is a 200 with k items."""
    import uvicorn

    port = _free_port()
    runtime = Faulty.load(export["out"], beams=CFG.beams)
    app = create_app(export["out"], CFG, runtime=runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.05)
        items = export["ids"].item_ids
        rng = random.Random(0)
        jobs = []
        for i in range(96):
            history = rng.sample(items, rng.randint(0, 5))
            if i % 2:
                jobs.append(("/recommend", {"user_id": f"u{i}", "history": history, "k": 5}))
            else:
                jobs.append(("/search", {"query": " ".join(rng.sample(WORDS, 2)), "history": history, "k": 5}))
            if i % 3 == 0:   # a bad request beside every third good one
                jobs.append(("/search", {"query": "poison" if i % 2 else "\ud800", "k": 5}))

        def call(job):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                # json.dumps escapes the lone surrogate as the 6 characters \ud800, as a client would send it
                r = c.post(job[0], content=json.dumps(job[1]), headers={"content-type": "application/json"})
                return r.status_code, len(r.json().get("items", []))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, jobs, timeout=120))
        seconds = time.perf_counter() - t0
        bad = [j[1].get("query") in ("poison", "\ud800") for j in jobs]
        good = [r for r, b in zip(results, bad) if not b]
        assert len(good) == 96 and good == [(200, 5)] * 96          # 0 errors for the good requests
        assert sorted(r[0] for r, b in zip(results, bad) if b) == [422] * 16 + [500] * 16
        stats = httpx.get(f"http://127.0.0.1:{port}/health").json()
        # concurrent requests were decoded together, not one by one
        assert stats["batches"] < len(jobs)
        print(f"load: {len(jobs)} requests ({sum(bad)} bad), 16 clients, {seconds:.2f} s, "
              f"{len(jobs) / seconds:.1f} req/s, {stats['batches']} batches, good: {len(good)} x 200")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
