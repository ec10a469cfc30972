"""Loading the model: a local directory, a GGUF file or the embedded SmolLM2 (converted
once), bitsandbytes quantization configs and refusals, and the differences between the
transformers releases we support."""
