"""The HTTP service on a tiny exported model: endpoints, 4xx messages, cold start, and a bounded
concurrent load test against a real uvicorn server on loopback."""
from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from test_export_onnx import WORDS, tiny_world

from gensar.config import Params, ServeConfig
from gensar.serve.app import create_app
from gensar.serve.runtime import Runtime

CFG = ServeConfig(beams=10, max_k=10, max_batch=8, max_wait_ms=5.0)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from gensar.stages.export import run

    torch.set_num_threads(2)
    world = tiny_world(tmp_path_factory.mktemp("app"), n_items=80)
    out = world["root"] / "models" / "onnx"
    run(Params(), model=world["model_dir"], ids=world["ids_dir"], canonical=world["canonical"], out=out)
    world["out"] = out
    return world


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
])
def test_bad_requests_get_clear_4xx(client, path, body, status, message):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_concurrent_load_on_loopback_has_no_errors(export):
    """16 concurrent clients, 96 requests, bounded to 120 s: every answer is a 200 with k items."""
    import uvicorn

    port = _free_port()
    runtime = Runtime.load(export["out"], beams=CFG.beams)
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

        def call(job):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                r = c.post(*job[:1], json=job[1])
                return r.status_code, len(r.json().get("items", []))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, jobs, timeout=120))
        seconds = time.perf_counter() - t0
        assert results == [(200, 5)] * len(jobs)
        stats = httpx.get(f"http://127.0.0.1:{port}/health").json()
        # concurrent requests were decoded together, not one by one
        assert stats["batches"] < len(jobs)
        print(f"load: {len(jobs)} requests, 16 clients, {seconds:.2f} s, {len(jobs) / seconds:.1f} req/s, "
              f"{stats['batches']} batches")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
