"""Python clients for dbsplice's drills: PyMySQL opening a new connection
per transaction, and SQLAlchemy's QueuePool (pre-ping on checkout, as
applications configure it) sharing a few connections, both through dbsplice.

Usage: python3 pyclients.py HOST PORT USER PASSWORD FRESH POOLED
  FRESH threads each loop: connect, INSERT a row into pydrill.acks, COMMIT,
  SELECT @@port, close. POOLED threads share one engine of as many
  connections and loop: check out, SELECT @@port, check in.
Prints "ready" once every thread has been served once. Commands on stdin:
  burst N    N new connections at once (held ones wait); prints one JSON line:
             {"served": [seconds...], "refused": [seconds...],
              "failed": ["seconds: error"...]}
  stop       stops the loops and prints one JSON line: the counts, the
             connect times, the ports that answered and the acknowledged
             inserts (worker, seq). End of stdin ends the program.

A failed new connection is sorted by what failed it: "refused" (dbsplice's
own error 1040), "lost" (the server went away during the login: a server
killed while the client logged in, which no proxy can save), "failed"
(anything else). A statement failing on an established connection is a
"query_error", not a failed connection.
"""

import json
import sys
import threading
import time

import pymysql
import sqlalchemy
from sqlalchemy import exc

CONNECT_TIMEOUT = 30
LOST = {2006, 2013}


def classify(err):
    code = err.args[0] if err.args else 0
    text = str(err.args[1]) if len(err.args) > 1 else str(err)
    if code == 1040 and "dbsplice" in text:
        return "refused"
    if code in LOST:
        return "lost"
    return "failed"


class Drill:
    def __init__(self, host, port, user, password):
        self.args = dict(host=host, port=port, user=user, password=password,
                         connect_timeout=CONNECT_TIMEOUT, autocommit=False)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counts = {"connections": 0, "refused": 0, "lost": 0, "failed": 0,
                       "query_error": 0, "pooled_checkouts": 0,
                       "pooled_refused": 0, "pooled_lost": 0,
                       "pooled_failed": 0, "pooled_query_error": 0}
        self.errors = []
        self.connect_seconds = []
        self.ports = {}
        self.acked = []
        self.served_once = set()

    def count(self, key, err=None):
        with self.lock:
            self.counts[key] += 1
            if err is not None and len(self.errors) < 20:
                self.errors.append(f"{key}: {err}")

    def fresh(self, worker):
        seq = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn = pymysql.connect(**self.args)
            except pymysql.err.MySQLError as err:
                self.count(classify(err), err)
                continue
            waited = time.monotonic() - started
            with self.lock:
                self.counts["connections"] += 1
                self.connect_seconds.append(waited)
            seq += 1
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO pydrill.acks (worker, seq) VALUES (%s, %s)",
                                (worker, seq))
                    conn.commit()
                    with self.lock:
                        self.acked.append([worker, seq])
                    cur.execute("SELECT @@port")
                    port = cur.fetchone()[0]
                with self.lock:
                    self.ports[port] = self.ports.get(port, 0) + 1
                    self.served_once.add(("fresh", worker))
            except pymysql.err.MySQLError as err:
                self.count("query_error", err)
            finally:
                try:
                    conn.close()
                except Exception:
                    pass

    def pooled(self, engine, worker):
        while not self.stop.is_set():
            try:
                conn = engine.connect()
            except exc.OperationalError as err:
                self.count("pooled_" + classify(err.orig), err.orig)
                continue
            with self.lock:
                self.counts["pooled_checkouts"] += 1
            try:
                conn.execute(sqlalchemy.text("SELECT @@port")).scalar()
                with self.lock:
                    self.served_once.add(("pooled", worker))
            except exc.DBAPIError as err:
                self.count("pooled_query_error", err.orig)
            finally:
                conn.close()
            time.sleep(0.01)

    def burst(self, n):
        out = {"served": [], "refused": [], "failed": []}
        held = []

        def one():
            started = time.monotonic()
            try:
                conn = pymysql.connect(**self.args)
                took = time.monotonic() - started
                with self.lock:
                    out["served"].append(took)
                held.append(conn)
            except pymysql.err.MySQLError as err:
                took = time.monotonic() - started
                with self.lock:
                    if classify(err) == "refused":
                        out["refused"].append(took)
                    else:
                        out["failed"].append(f"{took:.3f} s: {err}")

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for conn in held:
            conn.close()
        return out


def main():
    host, port, user, password, fresh, pooled = sys.argv[1:7]
    port, fresh, pooled = int(port), int(fresh), int(pooled)
    drill = Drill(host, port, user, password)
    setup = pymysql.connect(**drill.args)
    with setup.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS pydrill")
        cur.execute("CREATE TABLE IF NOT EXISTS pydrill.acks (worker INT, seq INT,"
                    " PRIMARY KEY (worker, seq))")
        cur.execute("TRUNCATE pydrill.acks")
    setup.commit()
    setup.close()
    url = f"mysql+pymysql://{user}:{password}@{host}:{port}/"
    engine = sqlalchemy.create_engine(
        url, pool_size=max(pooled, 1), max_overflow=0, pool_pre_ping=True,
        pool_timeout=CONNECT_TIMEOUT,
        connect_args={"connect_timeout": CONNECT_TIMEOUT})
    threads = [threading.Thread(target=drill.fresh, args=(w,)) for w in range(fresh)]
    threads += [threading.Thread(target=drill.pooled, args=(engine, w)) for w in range(pooled)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(drill.served_once) < fresh + pooled and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["burst"]:
            print(json.dumps(drill.burst(int(words[1]))), flush=True)
        elif words[:1] == ["stop"]:
            drill.stop.set()
            for t in threads:
                t.join()
            engine.dispose()
            print(json.dumps({"counts": drill.counts, "errors": drill.errors,
                              "connect_seconds": sorted(drill.connect_seconds),
                              "ports": drill.ports, "acked": drill.acked}),
                  flush=True)
    drill.stop.set()


if __name__ == "__main__":
    main()
