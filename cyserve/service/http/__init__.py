"""The OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/models and /health,
served by uvicorn on the gRPC server's event loop and engine (cyserve.service.server).

    request_body   OpenAI JSON -> the GenerateRequest the gRPC service takes (one validation path)
    response_body  the service's GenerateResponse messages -> OpenAI objects and stream chunks
    errors         domain exceptions -> HTTP status + OpenAI's error JSON
    app            the ASGI application: routes, auth, body limits, SSE, disconnects, telemetry
    server         uvicorn embedded in a running event loop
"""
