"""scistream_rs: SciStream tunnels from Python.

A tunnel carries a stream from an instrument (a detector at a light source)
to an analysis service at an HPC centre, authenticated and encrypted between
the two facilities' gateways. This module drives the gateways' control
servers (s2cs) with the same client library, trust handling, token store
(`s2uc login`) and config file (~/.config/scistream/s2uc.toml) as `s2uc`.

    import scistream_rs as ss

    hpc = ss.Gateway("hpc-gw.example.org:5000", server_cert="hpc.crt")
    inst = ss.Gateway("inst-gw.example.org:5000", server_cert="inst.crt")
    with ss.connect(hpc, inst, remote_ip="10.0.1.5", receiver_ports=5001, num_conn=2) as t:
        run_detector(stream_to=t.listeners)      # "host:port" strings
    # both halves released here, also when run_detector raised

One half at a time (SciStream's two use cases):

    s = hpc.inbound_request("10.0.1.5", [5001, 5002], num_conn=2)
    o = inst.outbound_request(s.uid, s.listeners, num_conn=2)
    ...
    o.release(); s.release()

Errors are ScistreamError subclasses with `.code` (the gRPC status name)
and `.message`; TrustError also has `.path`. Calls release the GIL while
they wait on the network, and may be made from several threads.
"""

from ._native import (
    FailedPreconditionError,
    Gateway,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ScistreamError,
    Session,
    TrustError,
    Tunnel,
    UnauthenticatedError,
    UnavailableError,
    __version__,
    connect,
)

__all__ = [
    "Gateway",
    "Session",
    "Tunnel",
    "connect",
    "ScistreamError",
    "InvalidArgumentError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "NotFoundError",
    "ResourceExhaustedError",
    "FailedPreconditionError",
    "UnavailableError",
    "TrustError",
    "__version__",
]
