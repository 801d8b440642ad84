"""HTTP/2 requests no conforming client sends, for the h2-to-HTTP/1.1 downgrade smuggling
checks of tests/strictness.rs: hyper-h2 with header validation off, over TLS with ALPN h2.

    python smuggle.py HOST PORT CA_FILE

Sends each case on its own connection and prints one JSON object: case -> the status the
gateway answered, or "reset" when it refused the stream or the connection."""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
SMUGGLED = b"GET /raw/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

CASES = {
    # A well-formed request first: proves the client works, so that a "reset" below is the
    # gateway's refusal and not this script failing.
    "control": ([(":method", "GET"), (":path", "/open/ok")], b""),
    # Content-Length says 0, the DATA frame carries a whole request.
    "h2.cl": ([(":method", "POST"), (":path", "/open/cl"), ("content-length", "0")], SMUGGLED),
    # Transfer-Encoding is not allowed in HTTP/2; its chunked end is followed by a request.
    "h2.te": ([(":method", "POST"), (":path", "/open/te"), ("transfer-encoding", "chunked")],
              b"0\r\n\r\n" + SMUGGLED),
    # CR/LF inside the path pseudo-header and inside a header value.
    "h2.crlf_path": ([(":method", "GET"), (":path", "/open/p HTTP/1.1\r\nHost: x\r\n\r\nGET /raw/smuggled")], b""),
    "h2.crlf_value": ([(":method", "GET"), (":path", "/open/v"), ("x-a", "1\r\n\r\nGET /raw/smuggled HTTP/1.1")], b""),
}


def run(headers, body):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    full = [(":scheme", "https"), (":authority", host)] + headers
    conn.send_headers(1, [(k.encode(), v.encode()) for k, v in full], end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    status = "reset"
    try:
        while True:
            data = sock.recv(65535)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status", b"").decode()
                if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return status
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (OSError, h2.exceptions.ProtocolError):
        pass
    finally:
        sock.close()
    return status


print(json.dumps({name: run(h, b) for name, (h, b) in CASES.items()}))
