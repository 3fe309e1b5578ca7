"""Delays packets for dbsplice's fault tests: binds NFQUEUE queue 0 in the
network namespace it runs in and accepts each queued packet DELAY_MS after it
arrived. A new delay in milliseconds on a line of stdin applies to packets
that arrive from then on; end of stdin stops the helper.

Usage: python3 nfqueue_delay.py DELAY_MS   (prints "ready" once bound)
"""

import collections
import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
QUEUE = 0


def message(kind, attrs, flags=NLM_F_REQUEST):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(QUEUE))
    for attr_type, payload in attrs:
        attr = struct.pack("=HH", 4 + len(payload), attr_type) + payload
        body += attr + b"\0" * (-len(attr) % 4)
    head = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0)
    return head + body


def configure(sock, attr):
    sock.send(message(NFQNL_MSG_CONFIG, [attr], NLM_F_REQUEST | NLM_F_ACK))
    reply = sock.recv(4096)
    kind = struct.unpack_from("=H", reply, 4)[0]
    error = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
    if error != 0:
        sys.exit(f"nfqueue config failed: errno {-error}")


def packet_ids(data):
    """The packet ids in one datagram of queued packets."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        if kind & 0xFF == NFQNL_MSG_PACKET and kind >> 8 == NFNL_SUBSYS_QUEUE:
            attr = offset + 20
            while attr + 4 <= offset + length:
                attr_len, attr_type = struct.unpack_from("=HH", data, attr)
                if attr_len < 4:
                    break
                if attr_type & 0x3FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, attr + 4)[0]
                attr += (attr_len + 3) & ~3
        offset += (length + 3) & ~3


def main():
    delay = int(sys.argv[1]) / 1000
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    configure(sock, (NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
    configure(sock, (NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
    print("ready", flush=True)
    held = collections.deque()  # (due, packet id), due times in order
    control = sys.stdin.fileno()
    pending = b""  # control input up to an incomplete line
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet = held.popleft()
            verdict = struct.pack("!II", NF_ACCEPT, packet)
            sock.send(message(NFQNL_MSG_VERDICT, [(NFQA_VERDICT_HDR, verdict)]))
        wait = max(0.0, held[0][0] - now) if held else None
        readable, _, _ = select.select([sock, control], [], [], wait)
        if sock in readable:
            arrived = time.monotonic()
            for packet in packet_ids(sock.recv(1 << 16)):
                due = max(arrived + delay, held[-1][0] if held else 0.0)
                held.append((due, packet))
        if control in readable:
            data = os.read(control, 4096)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.strip():
                    delay = int(line) / 1000


if __name__ == "__main__":
    main()
