"""A WebSocket client for tests/websocket.rs (the `websockets` library, not ours).

Usage: ws_client.py MODE URL [options as JSON]. Prints one JSON line with what happened.
Modes:
- echo: {"sessions": N, "messages": M} - N sessions at once, each sending M numbered text
  messages and checking every echo arrives in order; {"ok": sessions that passed, "errors": [...]}.
- big: {"bytes": N} - one binary message of N bytes; {"ok": echoed intact}.
- first: the first message the server sends; {"message": ...}.
- close: sends "x" (or {"send_bytes": N} bytes), waits for the close; {"code", "reason"}.
- wait: opens the session and waits (pings off) until it is closed; {"code", "reason",
  "seconds"}; "sessions": N opens N and reports each.
- status: a handshake the gateway may refuse; {"status": HTTP status, "body": ...}.
Options common to all: "token" (Bearer), "ca" (a CA file for wss://), "origin".
"""
import asyncio
import json
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def connect_to(url, opts):
    headers = {}
    if opts.get("token"):
        headers["Authorization"] = "Bearer " + opts["token"]
    context = None
    if url.startswith("wss://"):
        context = ssl.create_default_context(cafile=opts["ca"])
    return connect(url, additional_headers=headers, ssl=context, max_size=None,
                   ping_interval=None, compression=None, open_timeout=20,
                   origin=opts.get("origin"), close_timeout=5)


async def echo_session(url, opts, n):
    async with connect_to(url, opts) as ws:
        for i in range(n):
            await ws.send(f"message {i}")
            got = await asyncio.wait_for(ws.recv(), 30)
            if got != f"message {i}":
                raise AssertionError(f"sent message {i}, got {got!r}")


async def echo(url, opts):
    results = await asyncio.gather(
        *[echo_session(url, opts, opts["messages"]) for _ in range(opts["sessions"])],
        return_exceptions=True)
    errors = [repr(r) for r in results if r is not None]
    return {"ok": len(results) - len(errors), "errors": errors[:5]}


async def big(url, opts):
    payload = bytes(i % 251 for i in range(opts["bytes"]))
    async with connect_to(url, opts) as ws:
        await ws.send(payload)
        got = await asyncio.wait_for(ws.recv(), 30)
        return {"ok": got == payload, "len": len(got)}


async def first(url, opts):
    async with connect_to(url, opts) as ws:
        return {"message": await asyncio.wait_for(ws.recv(), 30)}


async def close(url, opts):
    async with connect_to(url, opts) as ws:
        await ws.send(b"x" * opts["send_bytes"] if "send_bytes" in opts else "x")
        try:
            await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        return {"code": ws.close_code, "reason": ws.close_reason}


async def wait_one(url, opts, ready):
    start = time.monotonic()
    async with connect_to(url, opts) as ws:
        ready.append(1)
        if len(ready) == opts.get("sessions", 1):
            print(json.dumps({"open": len(ready)}), flush=True)
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
        return {"code": ws.close_code, "reason": ws.close_reason,
                "seconds": time.monotonic() - start}


async def wait(url, opts):
    ready = []
    results = await asyncio.gather(
        *[wait_one(url, opts, ready) for _ in range(opts.get("sessions", 1))],
        return_exceptions=True)
    return {"sessions": [r if isinstance(r, dict) else {"error": repr(r)} for r in results]}


async def status(url, opts):
    try:
        async with connect_to(url, opts):
            return {"status": 101}
    except InvalidStatus as e:
        return {"status": e.response.status_code,
                "body": e.response.body.decode("utf-8", "replace"),
                "headers": {k.lower(): v for k, v in e.response.headers.raw_items()}}


async def main():
    mode, url = sys.argv[1], sys.argv[2]
    opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    result = await {"echo": echo, "big": big, "first": first, "close": close, "wait": wait,
                    "status": status}[mode](url, opts)
    print(json.dumps(result), flush=True)


asyncio.run(main())
