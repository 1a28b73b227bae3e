"""A client of the cyserve.v1 contract: a channel with TLS, mutual TLS and a bearer token
(channel.py), calls with deadlines and retries (client.py, retry.py), and failures that carry the
server's details (errors.py). It needs grpcio, grpcio-status and the generated `cyserve.v1` stubs
only: the `cyserve-client` distribution (clients/python) is this package and those stubs."""
from cyserve.client.channel import DEFAULT_ADDRESS, ENV_VARS, ChannelOptions, open_channel
from cyserve.client.client import PARAMETERS, Client, generate_request
from cyserve.client.errors import CallError, FieldViolation
from cyserve.client.retry import NO_RETRY, RetryPolicy

__all__ = ["CallError", "ChannelOptions", "Client", "DEFAULT_ADDRESS", "ENV_VARS", "FieldViolation",
           "NO_RETRY", "PARAMETERS", "RetryPolicy", "generate_request", "open_channel"]
