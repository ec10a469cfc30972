"""The API edge of generation: the zopilot.v1.Generation servicer, the checks that turn a
protobuf request into a domain ``GenerationRequest`` (or every field violation), requests
built in-process without protobuf, special tokens kept as text, and the send deadline that
cancels a stream whose client stopped reading."""
