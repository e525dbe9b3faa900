#!/usr/bin/env python3
"""Wall time of making (and releasing) a whole tunnel, three ways, side by side
on two local gateways (loopback, TLS control and data channels):

  s2uc connect          one command, both halves
  two s2uc calls        inbound_request, then outbound_request (as a user types them)
  scistream_rs.connect  the Python module, in this process

Rounds alternate between the three; each round makes and releases one tunnel
per way. Prints p50/p90 per way and their ratios. Run with a Python that has
the scistream-rs wheel installed (its bin/ provides s2cs and s2uc):

  tools/dist.sh --wheel && python3 -m venv /tmp/v && /tmp/v/bin/pip install target/wheels/*.whl
  /tmp/v/bin/python tools/measure-connect.py --rounds 30
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scistream_rs as ss

BIN = Path(sys.executable).parent


def start_gateway(pki, name, lo):
    state = tempfile.mkdtemp(prefix=f"measure-{name}-")
    p = subprocess.Popen(
        [str(BIN / "s2cs"), "--port", "0", "--control-ip", "127.0.0.1", "--listener-ip", "127.0.0.1",
         "--port-range", f"{lo}-{lo + 63}", "--state-dir", state, "--server_crt", str(pki / f"{name}.crt"),
         "--server_key", str(pki / f"{name}.key"), "--peer-ca", str(pki / "ca.crt"), "--drain-timeout", "1s"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    assert line.startswith("s2cs listening on "), line
    return p, f"localhost:{line.rsplit(':', 1)[1].strip()}"


def s2uc(*args):
    out = subprocess.run([str(BIN / "s2uc"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--num-conn", type=int, default=2)
    a = ap.parse_args()
    pki = Path(tempfile.mkdtemp(prefix="measure-pki-"))
    s2uc("certs", "--out", str(pki), "--gateway", "hpc", "--gateway", "inst")
    ca = str(pki / "ca.crt")
    procs = []
    try:
        hp, hpc = start_gateway(pki, "hpc", 24000)
        ip, inst = start_gateway(pki, "inst", 24100)
        procs = [hp, ip]
        n = str(a.num_conn)
        common = ["--remote_ip", "127.0.0.1", "--receiver_ports", "9", "--num_conn", n]

        def release(uid):
            s2uc("release", "--s2cs", inst, "--server_cert", ca, uid)
            s2uc("release", "--s2cs", hpc, "--server_cert", ca, uid)

        def via_connect():
            t0 = time.perf_counter()
            out = s2uc("connect", "--json", "--hpc", hpc, "--hpc-cert", ca, "--inst", inst, "--inst-cert", ca, *common)
            dt = time.perf_counter() - t0
            release(json.loads(out)["uid"])
            return dt

        def via_two_calls():
            t0 = time.perf_counter()
            inb = json.loads(s2uc("inbound_request", "--json", "--s2cs", hpc, "--server_cert", ca, *common))
            s2uc("outbound_request", "--json", "--s2cs", inst, "--server_cert", ca, "--num_conn", n,
                 inb["uid"], ",".join(inb["listeners"]))
            dt = time.perf_counter() - t0
            release(inb["uid"])
            return dt

        h, i = ss.Gateway(hpc, server_cert=ca), ss.Gateway(inst, server_cert=ca)
        h.list(), i.list()  # connections made once, as a workflow keeps its Gateway objects

        def via_python():
            t0 = time.perf_counter()
            t = ss.connect(h, i, "127.0.0.1", 9, num_conn=a.num_conn)
            dt = time.perf_counter() - t0
            t.release(drain=False)
            return dt

        ways = {"s2uc connect": via_connect, "two s2uc calls": via_two_calls, "scistream_rs.connect()": via_python}
        times = {k: [] for k in ways}
        for k, f in ways.items():  # warm-up
            f()
        for _ in range(a.rounds):
            for k, f in ways.items():
                times[k].append(f())
        base = statistics.median(times["s2uc connect"])
        print(f"{a.rounds} rounds, num_conn {a.num_conn}, loopback, TLS:")
        print(f"{'way':<24} {'p50 ms':>8} {'p90 ms':>8} {'p50 / s2uc connect':>20}")
        for k, v in times.items():
            v = sorted(v)
            p50, p90 = statistics.median(v), v[int(len(v) * 0.9) - 1]
            print(f"{k:<24} {p50 * 1e3:8.1f} {p90 * 1e3:8.1f} {p50 / base:20.2f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)


if __name__ == "__main__":
    main()
