"""Fixtures: real gateways (s2cs with its s2ds, from the installed wheel's
bin directory) on loopback with generated certificates, and a receiver that
hashes what it gets. Nothing here is mocked."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def binary(name):
    """An entry point the wheel installed next to this Python."""
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the scistream-rs wheel into this environment (tools/dist.sh --wheel)")
    return str(path)


_next_range = [15000 + (os.getpid() % 16) * 600]


def port_range(n):
    start = _next_range[0]
    _next_range[0] += n
    return start, start + n - 1


class S2cs:
    """One gateway: s2cs (which starts its s2ds) on 127.0.0.1."""

    def __init__(self, pki, name, ports=16, extra=()):
        self.dir = Path(tempfile.mkdtemp(prefix=f"s2cs-{name}-"))
        lo, hi = port_range(ports)
        args = [
            binary("s2cs"), "--port", "0", "--control-ip", "127.0.0.1",
            "--listener-ip", "127.0.0.1", "--port-range", f"{lo}-{hi}",
            "--state-dir", str(self.dir / "state"),
            "--server_crt", str(pki / f"{name}.crt"), "--server_key", str(pki / f"{name}.key"),
            "--peer-ca", str(pki / "ca.crt"), "--drain-timeout", "2s", *extra,
        ]
        self.log = open(self.dir / "s2cs.log", "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("s2cs listening on "):
            self.stop()
            raise RuntimeError(f"s2cs did not start: {line!r}\n{self.read_log()}")
        self.port = int(line.rsplit(":", 1)[1])
        self.address = f"localhost:{self.port}"

    def read_log(self):
        return (self.dir / "s2cs.log").read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA and certificates for gateways hpc, inst, small and other."""
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(
        [binary("s2uc"), "certs", "--out", str(d), "--gateway", "hpc", "--gateway", "inst",
         "--gateway", "small", "--gateway", "other"],
        check=True, capture_output=True,
    )
    return d


@pytest.fixture
def gateways(pki):
    """Two fresh gateways, HPC side and instrument side."""
    hpc, inst = S2cs(pki, "hpc"), S2cs(pki, "inst")
    yield hpc, inst
    hpc.stop()
    inst.stop()


@pytest.fixture
def start_gateway(pki):
    started = []

    def start(name, **kw):
        g = S2cs(pki, name, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


class Receiver:
    """Accepts connections; for each, the (bytes, sha256) of what arrived."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.results = []
        self.done = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        h, n = hashlib.sha256(), 0
        with conn:
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        with self.done:
            self.results.append((n, h.hexdigest()))
            self.done.notify_all()

    def wait(self, count=1, timeout=120):
        with self.done:
            assert self.done.wait_for(lambda: len(self.results) >= count, timeout), "receiver got no complete stream in time"
            return list(self.results)

    def close(self):
        self.sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def send(address, total, chunk=1 << 20, seed=b"x"):
    """Sends `total` pseudo-random bytes to host:port; their (bytes, sha256)."""
    host, port = address.rsplit(":", 1)
    h = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        sent = 0
        i = 0
        while sent < total:
            piece = (i.to_bytes(8, "little") + block)[: min(chunk, total - sent)]
            s.sendall(piece)
            h.update(piece)
            sent += len(piece)
            i += 1
    return sent, h.hexdigest()


def refused(address):
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False
