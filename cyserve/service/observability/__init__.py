"""Observability in one place: OpenTelemetry traces (`tracing`, `rpc_telemetry`, `telemetry`),
Prometheus metrics (`metrics`) and structlog JSON logs (`log`)."""
