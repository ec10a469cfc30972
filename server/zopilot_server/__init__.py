"""zopilotgpu gRPC inference server."""
