"""Type hints for scistream_rs (the classes are implemented in Rust)."""

from os import PathLike
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Type, Union

__version__: str

Ports = Union[int, Sequence[int]]

class ScistreamError(Exception):
    """Any error from a gateway or from the client."""

    code: str
    """The gRPC status name, e.g. "NOT_FOUND"."""
    message: str
    path: Optional[str]

class InvalidArgumentError(ScistreamError): ...
class UnauthenticatedError(ScistreamError): ...
class PermissionDeniedError(ScistreamError): ...
class NotFoundError(ScistreamError): ...
class ResourceExhaustedError(ScistreamError): ...
class FailedPreconditionError(ScistreamError): ...
class UnavailableError(ScistreamError): ...

class TrustError(ScistreamError):
    path: Optional[str]
    """The trust file concerned."""

class Gateway:
    """One gateway's control server (S2CS)."""

    def __init__(
        self,
        address: str,
        server_cert: Optional[Union[str, PathLike[str]]] = None,
        scope: Optional[str] = None,
        token: Optional[str] = None,
        insecure: bool = False,
    ) -> None: ...
    @property
    def address(self) -> str: ...
    def inbound_request(
        self,
        remote_ip: str,
        receiver_ports: Ports,
        num_conn: int = 5,
        rate: int = 0,
        protocol: str = "tcp",
    ) -> Session: ...
    def outbound_request(
        self,
        uid: str,
        remote_listeners: List[str],
        num_conn: int = 5,
        rate: int = 0,
        protocol: str = "tcp",
    ) -> Session: ...
    def status(self, uid: str) -> List[Dict[str, Any]]: ...
    def list(self) -> List[Dict[str, Any]]: ...
    def release(self, uid: str) -> None: ...

class Session:
    """One half of a tunnel on one gateway."""

    uid: str
    role: str
    listeners: List[str]
    targets: List[str]
    gateway: Gateway
    def release(self) -> None: ...

class Tunnel:
    """Both halves of a tunnel, released as a unit."""

    uid: str
    listeners: List[str]
    inbound: Session
    outbound: Session
    def release(self, drain: bool = True) -> None: ...
    def __enter__(self) -> "Tunnel": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def connect(
    hpc: Gateway,
    instrument: Gateway,
    remote_ip: str,
    receiver_ports: Ports,
    num_conn: int = 5,
    rate: int = 0,
    protocol: str = "tcp",
    drain_timeout: float = 60.0,
) -> Tunnel: ...
