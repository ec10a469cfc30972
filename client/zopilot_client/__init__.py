"""Python client for the zopilotgpu gRPC inference server."""
