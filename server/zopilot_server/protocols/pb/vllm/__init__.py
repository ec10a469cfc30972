"""Generated vllm.grpc.engine stubs (protos/vllm, smg-grpc-proto); never edit them."""
