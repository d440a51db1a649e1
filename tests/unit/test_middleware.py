"""The gateway's body limit, driven as ASGI: a small app behind BodyLimit, real messages in and out."""

from __future__ import annotations

import asyncio

from muxrec.services.middleware import BodyLimit


async def _echo(scope, receive, send):
    """An app that reads its whole body and answers with its length."""
    body, more = b"", scope["method"] != "GET"
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _call(method: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes] | None, limit: int = 10):
    """Run one request through BodyLimit(_echo); `chunks` None means receive() must never be called."""
    sent, calls = [], 0

    async def receive():
        nonlocal calls
        calls += 1
        if chunks is None:
            raise AssertionError("receive() called for a request without a body")
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "headers": headers}
    asyncio.run(BodyLimit(_echo, limit)(scope, receive, send))
    return sent[0]["status"], sent[1]["body"], calls


def test_a_request_without_a_body_passes_straight_on():
    assert _call("GET", [], None) == (200, b"0", 0)
    assert _call("GET", [(b"content-length", b"0")], None)[:2] == (200, b"0")


def test_a_declared_body_over_the_limit_is_refused_before_reading():
    status, body, calls = _call("POST", [(b"content-length", b"11")], [b"x" * 11])
    assert status == 413 and b"larger than 10 bytes" in body and calls == 0


def test_a_chunked_body_is_read_up_to_the_limit_then_refused():
    status, _, calls = _call("POST", [(b"transfer-encoding", b"chunked")], [b"x" * 6, b"x" * 6, b"x" * 6])
    assert status == 413 and calls == 2  # answered on crossing the limit, the third chunk never read
    assert _call("POST", [(b"transfer-encoding", b"chunked")], [b"x" * 4, b"x" * 6])[:2] == (200, b"10")
    assert _call("POST", [(b"content-length", b"3")], [b"abc"])[:2] == (200, b"3")
