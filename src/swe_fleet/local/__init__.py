"""The embedded local stack (nats-server, Ray head, vLLM server) and ``swe-fleet run``."""
