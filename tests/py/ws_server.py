"""A WebSocket backend for tests/websocket.rs (the `websockets` library, not ours).

Usage: ws_server.py PORT [CERT KEY]. Prints "ready" once listening. Paths:
- anything: echoes every message back, text or binary, in order;
- /ws/close: closes with code 4001 ("bye") after the first message;
- /ws/hello: sends "hello" the instant the handshake is done (data right after the 101);
- /ws/headers: sends the handshake's request headers as JSON, then echoes.
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    path = ws.request.path
    if path.startswith("/ws/hello"):
        await ws.send("hello")
    if path.startswith("/ws/headers"):
        await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
    async for message in ws:
        if path.startswith("/ws/close"):
            await ws.close(4001, "bye")
            return
        await ws.send(message)


async def main():
    port = int(sys.argv[1])
    context = None
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
    async with serve(handler, "127.0.0.1", port, ssl=context, max_size=None,
                     ping_interval=None, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


asyncio.run(main())
