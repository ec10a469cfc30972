"""Other gRPC inference protocols on the same port: KServe v2 / Triton and TGIS."""
