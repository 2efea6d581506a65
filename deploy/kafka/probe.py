#!/usr/bin/env python3
"""Readiness probe for the development Kafka broker (standard library only).

An open port is not enough: a KRaft broker accepts connections before it can
serve clients. This sends a real Metadata request and succeeds only when the
broker answers it with a non-empty broker list and a controller id >= 0.

Kafka 4.x removed Metadata v0-v3 (KIP-896), so this uses Metadata v4, the
oldest version still served and the newest one that is not "flexible"
(no tagged fields), with request header v1 and response header v0.

Usage: probe.py [--host 127.0.0.1] [--port 9092] [--timeout 2.0] [-v]
Exit status: 0 ready, 1 not ready (reason on stderr with -v).
"""

import argparse
import os
import socket
import struct
import sys

API_KEY_METADATA = 3
API_VERSION = 4
CLIENT_ID = b"zns-gate-probe"


class Reader:
    """Minimal big-endian reader for the non-flexible Kafka wire format."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("response truncated")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int8(self) -> int:
        return self._take(">b")

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def string(self):
        """int16 length + UTF-8 bytes; length -1 means null."""
        length = self.int16()
        if length < 0:
            return None
        if self.pos + length > len(self.data):
            raise ValueError("response truncated")
        value = self.data[self.pos : self.pos + length].decode("utf-8", "replace")
        self.pos += length
        return value


def build_request(correlation_id: int) -> bytes:
    # Request header v1: api_key, api_version, correlation_id, client_id.
    header = struct.pack(">hhih", API_KEY_METADATA, API_VERSION, correlation_id, len(CLIENT_ID))
    header += CLIENT_ID
    # Metadata v4 body: topics = null (-1 => all topics),
    # allow_auto_topic_creation = false.
    body = struct.pack(">ib", -1, 0)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            # Kafka closes the connection on a request version it does not serve.
            raise ConnectionError("connection closed by broker")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def probe(host: str, port: int, timeout: float) -> str:
    """Return a one-line description of the cluster; raise on any failure."""
    correlation_id = (os.getpid() & 0x7FFF) * 1000 + 1
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(build_request(correlation_id))
        (size,) = struct.unpack(">i", recv_exact(sock, 4))
        if size < 4 or size > 64 * 1024 * 1024:
            raise ValueError(f"implausible response size {size}")
        r = Reader(recv_exact(sock, size))

    # Response header v0: correlation_id.
    got = r.int32()
    if got != correlation_id:
        raise ValueError(f"correlation id mismatch: sent {correlation_id}, got {got}")
    r.int32()  # throttle_time_ms
    brokers = []
    for _ in range(r.int32()):
        node_id = r.int32()
        broker_host = r.string()
        broker_port = r.int32()
        r.string()  # rack
        brokers.append(f"{node_id}@{broker_host}:{broker_port}")
    cluster_id = r.string()
    controller_id = r.int32()
    # The topic list is not needed; it is not parsed.
    if not brokers:
        raise ValueError("metadata has no brokers yet")
    if controller_id < 0:
        raise ValueError(f"no controller yet (controller_id={controller_id})")
    return f"cluster {cluster_id} brokers [{', '.join(brokers)}] controller {controller_id}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for this one try")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    try:
        info = probe(args.host, args.port, args.timeout)
    except (OSError, ValueError) as exc:
        if args.verbose:
            print(f"not ready: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if args.verbose:
        print(f"ready: {args.host}:{args.port}: {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
