"""The asyncio gRPC server, CLI and configuration. Talks to the engine only through its API."""
