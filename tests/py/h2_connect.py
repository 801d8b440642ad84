"""An RFC 8441 client for tests/websocket.rs (hyper-h2, not ours): over h2 with prior
knowledge to 127.0.0.1:PORT, reads the server's SETTINGS, then sends an extended CONNECT
(`:protocol websocket`) as a client that ignores them would, and a plain CONNECT.

Usage: h2_connect.py PORT. Prints {"enable_connect_protocol": value or null,
"extended": "status:N" | "reset:CODE" | "goaway:CODE", "plain": same}.
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings


def exchange(port, headers):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
        normalize_outbound_headers=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    enable = None
    sent = False
    while True:
        data = sock.recv(65536)
        if not data:
            return enable, "closed"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                s = event.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                enable = s.new_value if s else None
            if isinstance(event, h2.events.ResponseReceived):
                return enable, "status:" + dict(event.headers)[":status"]
            if isinstance(event, h2.events.StreamReset):
                return enable, f"reset:{int(event.error_code)}"
            if isinstance(event, h2.events.ConnectionTerminated):
                return enable, f"goaway:{int(event.error_code)}"
        if not sent:
            # Sent raw: the library itself would refuse a :protocol the server did not allow.
            conn.send_headers(1, headers, end_stream=False)
            sent = True
        sock.sendall(conn.data_to_send())


port = int(sys.argv[1])
enable, extended = exchange(port, [(":method", "CONNECT"), (":protocol", "websocket"),
                                   (":scheme", "http"), (":path", "/ws/echo"),
                                   (":authority", f"127.0.0.1:{port}"),
                                   ("sec-websocket-version", "13")])
_, plain = exchange(port, [(":method", "CONNECT"), (":authority", "example.com:443")])
print(json.dumps({"enable_connect_protocol": enable, "extended": extended, "plain": plain}))
