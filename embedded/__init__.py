"""The servers jetchat starts itself on its embedded defaults, nats-server and Postgres, both from
wheels, with their data in a folder given by the caller; and the child-process base that they,
and the development servers of ``devtools`` (Cassandra, jetchat itself), and the benchmark's
Centrifugo share."""

from embedded.child import ChildServer, EmbeddedServerError, PortTaken, free_port
from embedded.nats import NatsServer, nats_server_binary
from embedded.postgres import EmbeddedPostgres

__all__ = [
    "ChildServer",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "NatsServer",
    "PortTaken",
    "free_port",
    "nats_server_binary",
]
