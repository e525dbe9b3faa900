"""scistream_rs against real gateways: whole tunnels, release on every path,
threads, and the entry points the wheel installs."""

import subprocess
import threading

import pytest
import scistream_rs as ss

from conftest import binary, refused, send


def gw(g, pki, **kw):
    return ss.Gateway(g.address, server_cert=str(pki / "ca.crt"), **kw)


def test_connect_carries_256_mib_byte_exact(gateways, pki, receiver):
    hpc, inst = gateways
    with ss.connect(gw(hpc, pki), gw(inst, pki), "127.0.0.1", receiver.port, num_conn=2) as t:
        assert len(t.listeners) == 2 and t.uid
        assert t.inbound.role == "PROD" and t.outbound.role == "CONS"
        assert t.outbound.listeners == t.listeners
        sent = send(t.listeners[0], 256 << 20)
        assert receiver.wait(1)[0] == sent
    for l in t.listeners + t.inbound.listeners:
        assert refused(l), f"{l} still open after the with block"
    with pytest.raises(ss.NotFoundError):
        gw(hpc, pki).status(t.uid)
    with pytest.raises(ss.NotFoundError):
        gw(inst, pki).status(t.uid)


def test_an_exception_in_the_with_block_releases_both_sides(gateways, pki, receiver):
    hpc, inst = gateways

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with ss.connect(gw(hpc, pki), gw(inst, pki), "127.0.0.1", [receiver.port], num_conn=1) as t:
            listeners = list(t.listeners) + list(t.inbound.listeners)
            raise Boom()
    for l in listeners:
        assert refused(l)
    assert gw(hpc, pki).list() == [] and gw(inst, pki).list() == []


def test_a_refused_second_half_leaves_nothing_on_the_first_gateway(start_gateway, pki, receiver):
    hpc = start_gateway("hpc")
    small = start_gateway("small", ports=4, extra=("--max-ports-per-identity", "4"))
    inst = gw(small, pki)
    # Take every port of the instrument gateway (two sessions of two).
    held = [gw(hpc, pki).inbound_request("127.0.0.1", receiver.port, num_conn=2) for _ in range(2)]
    for s in held:
        inst.outbound_request(s.uid, s.listeners, num_conn=2)
    before = len(gw(hpc, pki).list())
    with pytest.raises(ss.ResourceExhaustedError) as e:
        ss.connect(gw(hpc, pki), inst, "127.0.0.1", receiver.port, num_conn=2)
    assert e.value.code == "RESOURCE_EXHAUSTED"
    assert "was released" in str(e.value), str(e.value)
    assert len(gw(hpc, pki).list()) == before, "the inbound half was released"


def test_one_half_at_a_time_as_scistreams_use_cases(gateways, pki, receiver):
    hpc, inst = gateways
    h, i = gw(hpc, pki), gw(inst, pki)
    s = h.inbound_request("127.0.0.1", [receiver.port], num_conn=2)
    o = i.outbound_request(s.uid, s.listeners, num_conn=2)
    assert o.uid == s.uid and o.targets == s.listeners
    sent = send(o.listeners[1], 4 << 20)
    assert receiver.wait(1)[0] == sent
    (status,) = h.status(s.uid)
    assert status["role"] == "PROD" and status["listeners"] == s.listeners
    o.release()
    s.release()
    assert h.list() == [] and i.list() == []


def test_usable_from_two_threads_at_once(gateways, pki, receiver):
    hpc, inst = gateways
    h, i = gw(hpc, pki), gw(inst, pki)
    results, errors = [], []

    def one(seed):
        try:
            with ss.connect(h, i, "127.0.0.1", receiver.port, num_conn=1) as t:
                results.append(send(t.listeners[0], 8 << 20, seed=seed))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(bytes([k]),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(receiver.wait(2)) == sorted(results)
    assert h.list() == [] and i.list() == []


def test_the_entry_points_run():
    for name in ["s2uc", "s2cs", "s2ds", "s2bench", "s2tune"]:
        out = subprocess.run([binary(name), "--version"], capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr)
        assert name in out.stdout


def test_help_explains():
    assert "context manager" in ss.Tunnel.__doc__
    assert "inbound" in ss.connect.__doc__
    assert "server_cert" in ss.Gateway.__doc__
    assert ss.__version__
