"""The Python client against a fake HTTP layer (httpx.MockTransport): what it sends, how it
reads answers, events and errors. Against the real service: tests/integration/test_client.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.client import (
    AsyncClient,
    Client,
    EventParser,
    JobFailed,
    LatentdConnectionError,
    LatentdError,
)

JOB_ID = "job_" + "ab" * 12


def job_json(status: str = "queued", **extra: object) -> dict:
    return {"id": JOB_ID, "status": status, "progress": {"step": 0, "total_steps": 0},
            "request": {"prompt": "red heart", "seeds": [1]}, "images": [], "error": None,
            **extra}


Handler = Callable[[httpx.Request], httpx.Response]


def recording(handler: Handler) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return handler(request)

    return seen, httpx.MockTransport(record)


def multipart_parts(request: httpx.Request) -> dict[str, tuple[str | None, str | None, bytes]]:
    """name -> (filename, content type, bytes) of a multipart body (enough for httpx's)."""
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    parts = {}
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        disposition = dict(item.split("=", 1) for item in
                           headers["Content-Disposition"].split("; ")[1:])
        filename = disposition.get("filename", "").strip('"') or None
        parts[disposition["name"].strip('"')] = (filename, headers.get("Content-Type"), body)
    return parts


def test_a_submit_sends_the_fields_as_json_with_the_key_leaving_none_to_the_service() -> None:
    seen, transport = recording(lambda r: httpx.Response(202, json=job_json()))
    with Client("http://svc", api_key="ltd_k", transport=transport) as client:
        job = client.submit("red heart", steps=4, seed=None, outpaint={"left": 8},
                            idempotency_key="k1")
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/v1/jobs")
    assert request.headers["authorization"] == "Bearer ltd_k"
    assert request.headers["idempotency-key"] == "k1"
    assert json.loads(request.content) == {"prompt": "red heart", "steps": 4,
                                           "outpaint": {"left": 8}}
    assert (job.id, job.status, job.done) == (JOB_ID, "queued", False)
    assert job.request["seeds"] == [1] and job.data["progress"]["total_steps"] == 0


def test_image_bytes_and_paths_are_uploaded_as_multipart_files(tmp_path: Path) -> None:
    init = tmp_path / "heart.png"
    init.write_bytes(b"\x89PNG init")
    seen, transport = recording(lambda r: httpx.Response(202, json=job_json()))
    with Client("http://svc", transport=transport) as client:
        client.submit("a cat", task="inpaint", init_image=init, mask_image=b"mask bytes")
        client.submit("a cat", task="image-to-image", init_image="aGVsbG8=")
    upload, base64_text = seen
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = multipart_parts(upload)
    assert set(parts) == {"request", "init_image", "mask_image"}
    assert parts["request"][:2] == (None, "application/json")  # a text part, not a file
    assert json.loads(parts["request"][2]) == {"prompt": "a cat", "task": "inpaint"}
    assert parts["init_image"] == ("heart.png", "image/png", b"\x89PNG init")
    assert parts["mask_image"][0] and parts["mask_image"][2] == b"mask bytes"
    # A str is the JSON body's base64 text, sent as it is.
    assert json.loads(base64_text.content)["init_image"] == "aGVsbG8="
    assert "authorization" not in upload.headers  # no key given: none sent


def test_a_refusal_raises_the_apis_error() -> None:
    body = {"error": {"code": "invalid_request",
                      "message": "steps: Input should be less than or equal to 150",
                      "field": "steps"}}
    _, transport = recording(lambda r: httpx.Response(422, json=body))
    with Client("http://svc", transport=transport) as client, \
            pytest.raises(LatentdError) as raised:
        client.submit("x", steps=500)
    error = raised.value
    assert (error.status_code, error.code, error.field) == (422, "invalid_request", "steps")
    assert str(error) == error.message == body["error"]["message"]

    busy = {"error": {"code": "queue_full", "message": "full", "field": None}}
    _, transport = recording(lambda r: httpx.Response(503, json=busy,
                                                      headers={"Retry-After": "7"}))
    with Client("http://svc", transport=transport) as client, \
            pytest.raises(LatentdError) as raised:
        client.models()
    assert (raised.value.code, raised.value.retry_after, raised.value.field) == (
        "queue_full", 7, None)


def test_an_answer_not_in_the_apis_shape_is_still_a_latentd_error() -> None:
    _, transport = recording(lambda r: httpx.Response(502, text="<h1>Bad Gateway</h1>"))
    with Client("http://svc", transport=transport) as client, \
            pytest.raises(LatentdError) as raised:
        client.get(JOB_ID)
    assert raised.value.code == "http_error" and raised.value.status_code == 502
    assert "Bad Gateway" in raised.value.message


def test_no_answer_is_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client("http://svc", transport=httpx.MockTransport(refuse)) as client, \
            pytest.raises(LatentdConnectionError) as raised:
        client.list()
    assert raised.value.status_code is None and "http://svc" in raised.value.message


def test_generate_waits_with_prefer_wait_and_returns_the_finished_job() -> None:
    states = iter(["running", "succeeded"])

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=job_json())
        return httpx.Response(200, json=job_json(next(states), images=[{"index": 0}]))

    seen, transport = recording(answer)
    with Client("http://svc", transport=transport) as client:
        job = client.generate("red heart", steps=2)
    assert job.status == "succeeded" and job.images == [{"index": 0}]
    waits = [r for r in seen if r.method == "GET"]
    assert len(waits) == 2 and all(r.headers["prefer"].startswith("wait=") for r in waits)
    assert waits[0].url.path == f"/v1/jobs/{JOB_ID}"


def test_generate_raises_job_failed_with_the_job_when_it_ends_without_images() -> None:
    failed = job_json("failed", error={"code": "generation_failed", "message": "boom"})

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202 if request.method == "POST" else 200,
                              json=job_json() if request.method == "POST" else failed)

    _, transport = recording(answer)
    with Client("http://svc", transport=transport) as client:
        with pytest.raises(JobFailed) as raised:
            client.generate("x")
        assert client.generate("x", wait=False).status == "queued"
    assert raised.value.code == "generation_failed" and "boom" in raised.value.message
    assert raised.value.job.status == "failed"


def sse(*events: tuple[str, dict]) -> bytes:
    """An event stream as sse-starlette writes it: CRLF lines, pings as comments."""
    out = b": ping - 2026-01-01 00:00:00\r\n\r\n"
    for name, data in events:
        out += f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()
    return out


def test_events_yield_each_event_with_its_job() -> None:
    stream = sse(("queued", job_json()), ("started", job_json("running")),
                 ("progress", job_json("running", progress={"step": 1, "total_steps": 2})),
                 ("completed", job_json("succeeded")))
    _, transport = recording(lambda r: httpx.Response(
        200, content=stream, headers={"content-type": "text/event-stream"}))
    with Client("http://svc", transport=transport) as client:
        events = list(client.events(JOB_ID))
    assert [e.type for e in events] == ["queued", "started", "progress", "completed"]
    assert events[2].job.progress == {"step": 1, "total_steps": 2}
    assert events[-1].job.done


def test_the_event_parser_follows_the_sse_rules() -> None:
    parser = EventParser()
    lines = [": comment", "event: progress", 'data: {"id": "job_1",', 'data: "status": "running"}',
             "id: 7", "", "", 'data:{"id": "job_2", "status": "queued"}', ""]
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert [(e.type, e.job.id, e.job.status) for e in events] == [
        ("progress", "job_1", "running"), ("message", "job_2", "queued")]
    parser.feed("data: not json")
    with pytest.raises(LatentdError, match="not a job"):
        parser.feed("")


def test_events_of_an_unknown_job_raise_before_any_event() -> None:
    missing = {"error": {"code": "job_not_found", "message": "job not found", "field": None}}
    _, transport = recording(lambda r: httpx.Response(404, json=missing))
    with Client("http://svc", transport=transport) as client, \
            pytest.raises(LatentdError) as raised:
        next(client.events(JOB_ID))
    assert raised.value.code == "job_not_found" and raised.value.status_code == 404


def test_an_image_follows_a_redirect_without_taking_the_key_along() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "svc":
            return httpx.Response(307, headers={"location": "http://store/obj?sig=1"})
        return httpx.Response(200, content=b"png bytes")

    seen, transport = recording(answer)
    with Client("http://svc", api_key="ltd_secret", transport=transport) as client:
        assert client.image(JOB_ID, 1) == b"png bytes"
    api, store = seen
    assert api.url.path == f"/v1/jobs/{JOB_ID}/images/1"
    assert api.headers["authorization"] == "Bearer ltd_secret"
    assert "authorization" not in store.headers


def test_list_cancel_delete_and_models_call_their_routes() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs":
            return httpx.Response(200, json={"jobs": [job_json()], "next_cursor": JOB_ID})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=[{"name": "emoji", "available": True}])
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, json=job_json("canceled"))

    seen, transport = recording(answer)
    with Client("http://svc/", transport=transport) as client:
        page = client.list("queued", limit=5)
        assert [j.id for j in page.jobs] == [JOB_ID] and page.next_cursor == JOB_ID
        assert client.cancel(JOB_ID).status == "canceled"
        assert client.delete(JOB_ID) is None
        assert client.models() == [{"name": "emoji", "available": True}]
        # An id is one path segment, whatever it holds.
        client.cancel("../models")
    assert dict(seen[0].url.params) == {"status": "queued", "limit": "5"}
    assert [(r.method, r.url.raw_path.decode()) for r in seen[1:3]] == [
        ("POST", f"/v1/jobs/{JOB_ID}/cancel"), ("DELETE", f"/v1/jobs/{JOB_ID}")]
    assert seen[-1].url.raw_path == b"/v1/jobs/..%2Fmodels/cancel"


@pytest.mark.anyio
async def test_the_async_client_submits_waits_streams_and_raises_alike() -> None:
    stream = sse(("started", job_json("running")), ("completed", job_json("succeeded")))
    states = iter(["running", "succeeded"])

    async def answer(request: httpx.Request) -> httpx.Response:
        await request.aread()
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=stream)
        if request.url.path.endswith("/images/0"):
            return httpx.Response(404, json={"error": {
                "code": "image_not_found", "message": "no image 0", "field": None}})
        if request.method == "POST":
            assert request.headers["content-type"].startswith("multipart/form-data")
            return httpx.Response(202, json=job_json())
        return httpx.Response(200, json=job_json(next(states)))

    async with AsyncClient("http://svc", api_key="ltd_k",
                           transport=httpx.MockTransport(answer)) as client:
        job = await client.generate("red heart", task="image-to-image", init_image=b"png")
        assert job.status == "succeeded"
        assert [e.type async for e in client.events(JOB_ID)] == ["started", "completed"]
        with pytest.raises(LatentdError) as raised:
            await client.image(JOB_ID, 0)
    assert raised.value.code == "image_not_found"


def test_control_images_are_sent_as_base64_inside_the_json(tmp_path: Path) -> None:
    image = tmp_path / "edges.png"
    image.write_bytes(b"\x89PNG edges")
    seen, transport = recording(lambda r: httpx.Response(202, json=job_json()))
    with Client("http://svc", transport=transport) as client:
        client.submit("a cat", loras=[{"name": "ink", "scale": 0.5}], control=[
            {"model": "canny", "image": image, "scale": 0.8},
            {"model": "depth", "image": b"raw"},
            {"model": "pose", "image": f"job:{JOB_ID}/0"}])
    body = json.loads(seen[0].content)
    assert body["loras"] == [{"name": "ink", "scale": 0.5}]
    assert [c["image"] for c in body["control"]] == [
        "iVBORyBlZGdlcw==", "cmF3", f"job:{JOB_ID}/0"]
    assert body["control"][0]["scale"] == 0.8
