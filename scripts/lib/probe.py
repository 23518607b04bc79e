#!/usr/bin/env python3
"""Readiness probes for scripts/services, stdlib only (no client libraries needed).

  probe.py port HOST PORT            exit 0 if something accepts TCP connections there
  probe.py kafka HOST PORT TOPIC     Kafka Metadata v4 request that auto-creates TOPIC;
                                     exit 0 once a broker answers and TOPIC has a leader
  probe.py cql HOST PORT             CQL native protocol v4: STARTUP, then
                                     SELECT release_version FROM system.local; prints it

Each probe makes one attempt with short socket timeouts; the caller loops with its own
deadline. Exit 1 = not ready yet (message on stderr).
"""

import socket
import struct
import sys

TIMEOUT = 5.0


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return buf


def connect(host, port):
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


# --------------------------------------------------------------------------- kafka


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals[0] if len(vals) == 1 else vals

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s


def kafka(host, port, topic):
    # Metadata v4 (the oldest version Kafka 4.x still serves; non-flexible encoding).
    client_id = b"logsphere-probe"
    name = topic.encode()
    body = struct.pack(">i", 1) + struct.pack(">h", len(name)) + name + b"\x01"
    header = struct.pack(">hhih", 3, 4, 42, len(client_id)) + client_id
    req = header + body
    with connect(host, port) as s:
        s.sendall(struct.pack(">i", len(req)) + req)
        (size,) = struct.unpack(">i", recv_exact(s, 4))
        r = Reader(recv_exact(s, size))
    if r.take(">i") != 42:
        raise RuntimeError("bad correlation id")
    r.take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(r.take(">i")):
        node_id = r.take(">i")
        bhost = r.string()
        bport = r.take(">i")
        r.string()  # rack
        brokers.append(f"{node_id}@{bhost}:{bport}")
    cluster_id = r.string()
    controller = r.take(">i")
    if not brokers:
        raise RuntimeError("no brokers in metadata yet")
    for _ in range(r.take(">i")):
        err = r.take(">h")
        tname = r.string()
        r.take(">b")  # is_internal
        leaders = []
        for _ in range(r.take(">i")):
            perr, _idx, leader = r.take(">hii")
            for _array in ("replica_nodes", "isr_nodes"):
                for _ in range(r.take(">i")):
                    r.take(">i")
            if perr == 0 and leader >= 0:
                leaders.append(leader)
        if tname == topic:
            if err != 0 or not leaders:
                raise RuntimeError(f"topic {topic} not ready yet (error code {err})")
            print(f"kafka ok: cluster {cluster_id}, brokers {brokers}, controller {controller}, topic {topic} leader {leaders[0]}")
            return
    raise RuntimeError(f"topic {topic} missing from metadata response")


# --------------------------------------------------------------------------- cql


def cql_frame(stream, opcode, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def cql_read(sock):
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    return opcode, recv_exact(sock, length)


def cql_error(body):
    code = struct.unpack_from(">i", body)[0]
    (n,) = struct.unpack_from(">H", body, 4)
    return f"CQL error 0x{code:04x}: {body[6:6 + n].decode(errors='replace')}"


def cql(host, port):
    def sstr(s):
        b = s.encode()
        return struct.pack(">H", len(b)) + b

    with connect(host, port) as s:
        s.sendall(cql_frame(1, 0x01, struct.pack(">H", 1) + sstr("CQL_VERSION") + sstr("3.0.0")))
        op, body = cql_read(s)
        if op == 0x00:
            raise RuntimeError(cql_error(body))
        if op != 0x02:
            raise RuntimeError(f"expected READY, got opcode 0x{op:02x}")
        q = "SELECT release_version FROM system.local".encode()
        s.sendall(cql_frame(2, 0x07, struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)))
        op, body = cql_read(s)
    if op == 0x00:
        raise RuntimeError(cql_error(body))
    if op != 0x08:
        raise RuntimeError(f"expected RESULT, got opcode 0x{op:02x}")
    r = Reader(body)
    if r.take(">i") != 2:
        raise RuntimeError("RESULT is not Rows")
    flags = r.take(">i")
    ncols = r.take(">i")
    if flags & 0x0002:  # has_more_pages: skip the paging state (not expected without a page size)
        r.pos += 4 + max(0, struct.unpack_from(">i", r.data, r.pos)[0])
    if flags & 0x0004:  # no_metadata
        raise RuntimeError("unexpected no_metadata result")
    if flags & 0x0001:  # global tables spec
        r.string()
        r.string()
    for _ in range(ncols):
        if not flags & 0x0001:
            r.string()
            r.string()
        r.string()  # column name
        r.take(">H")  # type id (varchar; no extra type info)
    rows = r.take(">i")
    if rows < 1:
        raise RuntimeError("system.local returned no rows")
    n = r.take(">i")
    version = r.data[r.pos : r.pos + n].decode()
    print(f"cassandra ok: release_version {version}")


def main(argv):
    kind = argv[1]
    try:
        if kind == "port":
            connect(argv[2], argv[3]).close()
        elif kind == "kafka":
            kafka(argv[2], argv[3], argv[4])
        elif kind == "cql":
            cql(argv[2], argv[3])
        else:
            print(f"unknown probe {kind}", file=sys.stderr)
            return 2
    except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
        print(f"{kind} probe: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
