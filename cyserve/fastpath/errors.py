"""Domain exceptions of the engine. The service maps each to a gRPC status."""
from __future__ import annotations


class CyserveError(Exception):
    """Base class for every error the engine raises on purpose."""


class ModelLoadError(CyserveError):
    """The model file cannot be served: missing, truncated, wrong architecture or tensor type."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"cannot load model {path!r}: {problem}")
        self.path = path
        self.problem = problem


class InvalidRequestError(CyserveError):
    """The request cannot be served as given; `field` names what the caller must fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class EngineStoppedError(CyserveError):
    """The engine is shutting down or has stopped and takes no new requests."""
