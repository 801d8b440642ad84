"""A gRPC Greeter backend and client for tests/grpc.rs (grpcio, not ours).

Messages are helloworld's HelloRequest / HelloReply (one string field, number 1), encoded here
so that no generated code is needed; grpcio does everything else (framing, HTTP/2, trailers,
deadlines, status codes).

Server: grpc_greeter.py serve PORT [CERT KEY]. Prints "ready" once listening.
Methods of /helloworld.Greeter/:
- SayHello (unary): "Hello " + name; name "fail" -> NOT_FOUND "no greeter named fail";
  name "slow" -> answers after 3 s.
- SayHelloStreamReply (server streaming): name is a count N: N replies "0" .. "N-1";
  "big:N": N replies of 64 KiB each.
- SayHelloClientStream (client streaming): one reply with the count of requests and the
  total length of their names, "COUNT:BYTES".
- SayHelloBidiStream (bidirectional): each request echoed as it arrives.

Client: grpc_greeter.py call TARGET METHOD JSON-OPTIONS. Prints one JSON line:
{"code": "OK" or the status name, "details": ..., "replies": [...], "trailers": {...}}.
Options: "name", "names" (client/bidi streams), "token", "ca" (TLS with this CA; the
authority is "localhost"), "timeout" (seconds), "count_only" (replies not listed, counted),
"read_delay" (seconds to sleep after each reply read: a slow reader), "max_replies" (the
call is cancelled after that many), "prefix" (the path before the method name, by default
"/helloworld.Greeter/").
"""
import json
import sys
import time
from concurrent import futures

import grpc


def encode(text):
    data = text.encode()
    out = bytearray([0x0A])
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            break
    return bytes(out) + data


def decode(message):
    if not message:
        return ""
    i, shift, n = 1, 0, 0
    while True:
        byte = message[i]
        n |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if not byte & 0x80:
            break
    return message[i:i + n].decode()


def say_hello(request, context):
    name = decode(request)
    if name == "fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no greeter named fail")
    if name == "slow":
        time.sleep(3)
    return encode("Hello " + name)


def stream_reply(request, context):
    name = decode(request)
    if name.startswith("big:"):
        block = "x" * 65536
        for _ in range(int(name[4:])):
            yield encode(block)
        return
    for i in range(int(name)):
        yield encode(str(i))


def client_stream(requests, context):
    count = size = 0
    for r in requests:
        count += 1
        size += len(decode(r))
    return encode(f"{count}:{size}")


def bidi(requests, context):
    for r in requests:
        yield encode(decode(r))


def serve(port, cert=None, key=None):
    same = dict(request_deserializer=None, response_serializer=None)
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello, **same),
        "SayHelloStreamReply": grpc.unary_stream_rpc_method_handler(stream_reply, **same),
        "SayHelloClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **same),
        "SayHelloBidiStream": grpc.stream_stream_rpc_method_handler(bidi, **same),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("helloworld.Greeter", handlers),))
    address = f"127.0.0.1:{port}"
    if cert:
        creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, method, opts):
    if "ca" in opts:
        creds = grpc.ssl_channel_credentials(open(opts["ca"], "rb").read())
        channel = grpc.secure_channel(target, creds,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(target)
    metadata = [("authorization", "Bearer " + opts["token"])] if "token" in opts else None
    path = opts.get("prefix", "/helloworld.Greeter/") + method
    kind = {"SayHello": channel.unary_unary, "SayHelloStreamReply": channel.unary_stream,
            "SayHelloClientStream": channel.stream_unary,
            "SayHelloBidiStream": channel.stream_stream}.get(method, channel.unary_unary)
    stub = kind(path, request_serializer=None, response_deserializer=None)
    names = iter([encode(n) for n in opts.get("names", [])])
    request = encode(opts.get("name", "world"))
    timeout = opts.get("timeout")
    replies, count = [], 0
    result = {"code": "OK", "details": None, "trailers": {}}
    try:
        if method in ("SayHelloStreamReply", "SayHelloBidiStream"):
            arg = request if method == "SayHelloStreamReply" else names
            it = stub(arg, metadata=metadata, timeout=timeout)
            for reply in it:
                count += 1
                if not opts.get("count_only"):
                    replies.append(decode(reply))
                if opts.get("read_delay"):
                    time.sleep(opts["read_delay"])
                if count == opts.get("max_replies"):
                    it.cancel()
                    break
            result["trailers"] = dict(it.trailing_metadata() or ())
        else:
            arg = names if method == "SayHelloClientStream" else request
            reply, c = stub.with_call(arg, metadata=metadata, timeout=timeout)
            count += 1
            replies.append(decode(reply))
            result["trailers"] = dict(c.trailing_metadata() or ())
    except grpc.RpcError as e:
        result["code"] = e.code().name
        result["details"] = e.details()
        result["trailers"] = {k: v for k, v in (e.trailing_metadata() or ())
                              if isinstance(v, str)}
    result["replies"] = replies
    result["count"] = count
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), *sys.argv[3:5])
    else:
        call(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
