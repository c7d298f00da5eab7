"""Transport: one interface (``Transport``), in-process and mutual-TLS implementations."""

from veilql.engine.transport.base import Transport
from veilql.engine.transport.inprocess import InProcessNetwork

__all__ = ["Transport", "InProcessNetwork"]
