"""Each exception class from the case that causes it, against real gateways."""

import socket

import pytest
import scistream_rs as ss


def test_a_missing_trust_file_is_named(tmp_path):
    missing = tmp_path / "nope.crt"
    with pytest.raises(ss.TrustError) as e:
        ss.Gateway("localhost:5000", server_cert=str(missing))
    assert e.value.path == str(missing)
    assert str(missing) in str(e.value)


def test_a_certificate_the_trust_file_does_not_vouch_for(gateways, pki, tmp_path):
    hpc, _ = gateways
    stranger = tmp_path / "stranger"
    import subprocess
    from conftest import binary
    subprocess.run([binary("s2uc"), "certs", "--out", str(stranger)], check=True, capture_output=True)
    g = ss.Gateway(hpc.address, server_cert=str(stranger / "ca.crt"))
    with pytest.raises(ss.TrustError) as e:
        g.list()
    assert e.value.path == str(stranger / "ca.crt")


def test_unknown_uid_is_not_found(gateways, pki):
    hpc, _ = gateways
    g = ss.Gateway(hpc.address, server_cert=str(pki / "ca.crt"))
    with pytest.raises(ss.NotFoundError) as e:
        g.release("4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3")
    assert e.value.code == "NOT_FOUND"
    assert isinstance(e.value, ss.ScistreamError)


def test_unreachable_gateway(pki):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    g = ss.Gateway(f"127.0.0.1:{port}", server_cert=str(pki / "ca.crt"))
    with pytest.raises(ss.UnavailableError) as e:
        g.list()
    assert e.value.code == "UNAVAILABLE"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(receiver_ports="5001"), "receiver_ports"),
        (dict(receiver_ports=[]), "receiver_ports"),
        (dict(receiver_ports=5001, protocol="sctp"), "protocol"),
        (dict(receiver_ports=5001, num_conn=0), "num_conn"),
    ],
)
def test_bad_input_is_invalid_argument(gateways, pki, kwargs, words):
    hpc, _ = gateways
    g = ss.Gateway(hpc.address, server_cert=str(pki / "ca.crt"))
    with pytest.raises(ss.InvalidArgumentError) as e:
        g.inbound_request("127.0.0.1", **kwargs)
    assert words in str(e.value)
    assert g.list() == []


@pytest.fixture
def token_gateway(start_gateway, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789\nbob bob-token-0123456789\ncarol carol-token-0123456789\n")
    tokens.chmod(0o600)
    allowed = tmp_path / "allowed"
    allowed.write_text("alice\nbob\n")
    return start_gateway("other", extra=("--tokens-file", str(tokens), "--allow-identities", str(allowed)))


def test_tokens_identities_and_ownership(token_gateway, pki):
    ca = str(pki / "ca.crt")
    alice = ss.Gateway(token_gateway.address, server_cert=ca, token="alice-token-0123456789")
    bob = ss.Gateway(token_gateway.address, server_cert=ca, token="bob-token-0123456789")
    carol = ss.Gateway(token_gateway.address, server_cert=ca, token="carol-token-0123456789")
    nobody = ss.Gateway(token_gateway.address, server_cert=ca)
    assert "token" not in repr(alice)
    with pytest.raises(ss.UnauthenticatedError):
        nobody.list()
    with pytest.raises(ss.PermissionDeniedError):
        carol.inbound_request("127.0.0.1", 9, num_conn=1)
    s = alice.inbound_request("127.0.0.1", 9, num_conn=1)
    # bob cannot see or release alice's session.
    with pytest.raises(ss.NotFoundError):
        bob.release(s.uid)
    assert bob.list() == []
    s.release()
