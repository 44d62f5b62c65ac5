"""Stand-in workers for test_registration_parallel.py. A spawned worker imports the module of its function, so
this one imports nothing heavy at the top."""

import os
import time
from pathlib import Path


class _DiesOnCrashFiles:
    """A worker's pipe that kills its process (as the out-of-memory killer would) when handed an X-ray crash*."""

    def __init__(self, conn):
        self.conn = conn

    def recv(self):
        task = self.conn.recv()
        if task is not None and Path(task[1]).name.startswith("crash"):
            os._exit(3)
        return task

    def send(self, message):
        self.conn.send(message)


def crashing_worker(conn, *args):
    """The real worker, dying on X-rays named crash*."""
    from XrayToDRRRegistrationLib import parallel

    parallel.worker(_DiesOnCrashFiles(conn), *args)


def idle_worker(conn, *args):
    """Takes an X-ray and never finishes it."""
    conn.send(("ready",))
    conn.recv()
    time.sleep(600)
