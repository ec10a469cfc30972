"""KServe v2 / Open Inference Protocol ``inference.GRPCInferenceService`` with Triton's
``ModelStreamInfer``, over the same engine as zopilot.v1.

The served model looks like a model of Triton's vLLM backend (its tensor names and
``sampling_parameters`` keys), so clients written for Triton + vLLM work unchanged. A
request becomes a ``zopilot.v1.GenerateRequest`` and goes through zopilot.v1's own
validation and engine (``ProtocolAdapter.domain_request``, ``stream_chunks``,
``complete_generation``): admission, limits, errors, drain and cancellation are the same.

ModelStreamInfer (Triton's decoupled semantics, ``docs/user_guide/decoupled_models.md``):
the requests of one stream run concurrently, each answered by its own responses carrying
its ``id``; every response has the parameter ``triton_final_response`` (true on the last
one; with ``triton_enable_empty_final_response`` the last is an extra response without
outputs). A failed request gets one response with ``error_message`` and the stream goes
on. When the client half-closes, the requests already sent finish and then the stream
ends (what tritonclient's ``stop_stream()`` waits for); when it cancels or disconnects,
every request of the stream is cancelled and leaves the batch within one step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from zopilot_client.pb import generation_pb2 as pb

from ..error_table import to_service_error
from ..errors import (
    InvalidArgument,
    MalformedRequest,
    ResourceExhausted,
    ServiceError,
    refuse_malformed,
)
from ..generation.domain import Chunk, Completion, FinishReason, GenerationRequest
from ..generation.engine import complete_generation, stream_chunks
from . import sampling
from .mapping import NotFound, ProtocolAdapter, server_version
from .pb.inference import grpc_service_pb2 as kpb
from .pb.inference import grpc_service_pb2_grpc as kpb_grpc
from .tensors import TensorSpec, decode_inputs, raw_output

log = logging.getLogger(__name__)

SERVICE = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "zopilot"
MODEL_VERSION = "1"
PLATFORM = "zopilot"  # Triton's "platform"; the backend is reported as "transformers"
FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"
# Triton's own request parameters (tritonclient sets them from its keyword arguments).
TRITON_REQUEST_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout")

# vLLM backend tensor names (triton-inference-server/vllm_backend src/model.py).
INPUTS = {
    spec.name: spec
    for spec in (
        TensorSpec("text_input", "BYTES", optional=False),
        TensorSpec("stream", "BOOL"),
        TensorSpec("sampling_parameters", "BYTES"),
        TensorSpec("exclude_input_in_output", "BOOL"),
        TensorSpec("return_finish_reason", "BOOL"),
        TensorSpec("return_num_input_tokens", "BOOL"),
        TensorSpec("return_num_output_tokens", "BOOL"),
    )
}
OUTPUTS = {
    spec.name: spec
    for spec in (
        TensorSpec("text_output", "BYTES", (-1,)),
        TensorSpec("finish_reason", "BYTES", (-1,)),
        TensorSpec("num_input_tokens", "UINT32", (1,)),
        TensorSpec("num_output_tokens", "UINT32", (-1,)),
    )
}
_CONFIG_TYPES = {"BYTES": kpb.TYPE_STRING, "BOOL": kpb.TYPE_BOOL, "UINT32": kpb.TYPE_UINT32}
# vLLM's finish_reason strings; TIME_LIMIT is ours (vLLM has no time limit).
FINISH_REASONS = {
    FinishReason.LENGTH: "length",
    FinishReason.EOS_TOKEN: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.CONSTRAINT: "stop",
    FinishReason.TIME_LIMIT: "time_limit",
    FinishReason.CANCELLED: "abort",
    FinishReason.SHUTDOWN: "abort",
}
# zopilot.v1 field in a violation -> what the KServe client sent.
FIELD_NAMES = {"prompt": "inputs[text_input]", **sampling.FIELD_NAMES}


@dataclass(frozen=True)
class InferPlan:
    """One validated inference request: the domain request and how to answer it."""

    id: str
    model_name: str
    engine: Any
    request: GenerationRequest
    stream: bool
    prefix: str  # the prompt, when the output includes it (vLLM's default when unary)
    outputs: tuple[str, ...]
    empty_final: bool


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer, ProtocolAdapter):
    """inference.GRPCInferenceService for the one served model."""

    async def ServerLive(
        self, request: kpb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: kpb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=self._ready())

    def _ready(self) -> bool:
        engine = self._generation.engine
        return engine is not None and not engine.draining

    async def ServerMetadata(
        self, request: kpb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=[])

    async def ModelReady(
        self, request: kpb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelReadyResponse:
        if self._generation.engine is None:
            # Loading: not ready (the name may come from the model directory, not known yet).
            return kpb.ModelReadyResponse(ready=False)
        self._check(request.name, request.version)
        return kpb.ModelReadyResponse(ready=self._ready())

    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelMetadataResponse:
        name = self._check(request.name, request.version)
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in INPUTS.values()
            ],
            outputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in OUTPUTS.values()
            ],
        )

    async def ModelConfig(
        self, request: kpb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelConfigResponse:
        name = self._check(request.name, request.version)
        config = kpb.ModelConfig(
            name=name,
            platform=PLATFORM,
            backend="transformers",
            max_batch_size=0,  # inputs carry no batch dimension; batching is the engine's
            input=[
                kpb.ModelInput(
                    name=s.name,
                    data_type=_CONFIG_TYPES[s.datatype],
                    dims=s.shape,
                    optional=s.optional,
                )
                for s in INPUTS.values()
            ],
            output=[
                kpb.ModelOutput(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=s.shape)
                for s in OUTPUTS.values()
            ],
            model_transaction_policy=kpb.ModelTransactionPolicy(decoupled=True),
        )
        return kpb.ModelConfigResponse(config=config)

    async def RepositoryIndex(
        self, request: kpb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> kpb.RepositoryIndexResponse:
        if request.repository_name:
            raise NotFound("repository_name: this server has one unnamed repository")
        engine = self._generation.engine
        if engine is None:
            # The name may come from the model directory, known once the model is loaded.
            if request.ready:
                return kpb.RepositoryIndexResponse()
            name, state = self._config.served_model_name or "(loading)", "LOADING"
        else:
            name, state = self.model_name(), "READY" if self._ready() else "UNAVAILABLE"
        if request.ready and state != "READY":
            return kpb.RepositoryIndexResponse()
        index = kpb.RepositoryIndexResponse.ModelIndex(
            name=name, version=MODEL_VERSION, state=state
        )
        return kpb.RepositoryIndexResponse(models=[index])

    async def ModelInfer(
        self, request: kpb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelInferResponse:
        plan = await self._plan(request, context)
        if plan.stream:
            raise InvalidArgument.single(
                "inputs[stream]", "true needs ModelStreamInfer (ModelInfer returns the whole text)"
            )
        chunk = await complete_generation(plan.engine, plan.request)
        return _response(plan, chunk, chunk.completion, first=True)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterable[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        session = _StreamSession(self, context, stream_request_limit(self._config))
        async for response in session.run(request_iterator):
            yield response

    # --- translation ---

    def _check(self, name: str, version: str) -> str:
        served = self.check_model(name, "name")
        if version not in ("", MODEL_VERSION):
            raise NotFound(f"version: model {served!r} has only version {MODEL_VERSION!r}")
        return served

    async def _plan(
        self, request: kpb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> InferPlan:
        """Validate one ModelInferRequest into an InferPlan (INVALID_ARGUMENT / NOT_FOUND)."""
        name = self.check_model(request.model_name, "model_name")
        if request.model_version not in ("", MODEL_VERSION):
            raise NotFound(f"model_version: model {name!r} has only version {MODEL_VERSION!r}")
        request_id = request.id
        values = decode_inputs(request, INPUTS)
        options = _request_options(request)
        stream = bool(values.get("stream", False))
        exclude = values.get("exclude_input_in_output")
        if stream and exclude is False:
            raise InvalidArgument.single(
                "inputs[exclude_input_in_output]", "false is not allowed when streaming"
            )
        try:
            prompt = bytes(values["text_input"]).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument.single("inputs[text_input]", "is not UTF-8") from None
        message = pb.GenerateRequest(prompt=prompt, request_id=_zopilot_id(request_id))
        if "sampling_parameters" in values:
            if options.sampling:
                raise InvalidArgument.single(
                    "parameters",
                    "send sampling parameters in the sampling_parameters input or "
                    "as request parameters, not both",
                )
            sampling.apply(sampling.parse_json(bytes(values["sampling_parameters"])), message)
        else:
            sampling.apply(options.sampling, message)
        outputs = _outputs(request, values)
        if "num_output_tokens" in outputs:
            message.return_token_details = True  # counts the tokens of each response
        engine, domain = await self.domain_request(message, context, FIELD_NAMES)
        return InferPlan(
            id=request_id,
            model_name=name,
            engine=engine,
            request=domain,
            stream=stream,
            prefix="" if stream or exclude else prompt,
            outputs=outputs,
            empty_final=options.empty_final,
        )

    async def stream_responses(
        self, request: kpb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """The responses of one request on a ModelStreamInfer stream."""
        plan = await self._plan(request, context)
        if plan.stream:
            first = True
            async for chunk in stream_chunks(plan.engine, plan.request):
                final = chunk.completion is not None and not plan.empty_final
                yield _stream(_response(plan, chunk, chunk.completion, first=first, final=final))
                first = False
        else:
            chunk = await complete_generation(plan.engine, plan.request)
            final = not plan.empty_final
            yield _stream(_response(plan, chunk, chunk.completion, first=True, final=final))
        if plan.empty_final:
            empty = kpb.ModelInferResponse(
                model_name=plan.model_name, model_version=MODEL_VERSION, id=plan.id
            )
            empty.parameters[FINAL].bool_param = True
            yield _stream(empty)


@dataclass(frozen=True)
class _Options:
    sampling: dict[str, Any]
    empty_final: bool


def _request_options(request: kpb.ModelInferRequest) -> _Options:
    """Request parameters: Triton's empty-final switch, the rest sampling parameters
    (the vLLM backend reads them there when there is no sampling_parameters input)."""
    values: dict[str, Any] = {}
    empty_final = False
    for key, parameter in request.parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        value = getattr(parameter, which) if which else None
        if key == EMPTY_FINAL:
            if which != "bool_param":
                raise InvalidArgument.single(f"parameters[{EMPTY_FINAL}]", "must be a bool")
            empty_final = bool(value)
        elif key in TRITON_REQUEST_PARAMETERS:
            raise InvalidArgument.single(
                f"parameters[{key}]",
                "is not supported by this server (no sequence batching, "
                "priorities or queue timeouts; use a gRPC deadline)",
            )
        elif value is None:
            shown = key[:64] if key.isprintable() else "(unprintable)"
            raise InvalidArgument.single(f"parameters[{shown}]", "has no value")
        else:
            values[key] = value
    return _Options(values, empty_final)


def _outputs(request: kpb.ModelInferRequest, values: dict[str, Any]) -> tuple[str, ...]:
    """The output tensors to return: those requested by name, or text_output plus the
    ones switched on with the vLLM backend's return_* inputs."""
    if request.outputs:
        names = []
        for index, output in enumerate(request.outputs):
            if output.name not in OUTPUTS:
                shown = output.name[:64] if output.name.isprintable() else "(unprintable)"
                raise InvalidArgument.single(
                    f"outputs[{index}].name",
                    f"unknown output {shown!r}; this model returns {', '.join(OUTPUTS)}",
                )
            if output.parameters:
                raise InvalidArgument.single(
                    f"outputs[{index}].parameters", "output parameters are not supported"
                )
            if output.name not in names:
                names.append(output.name)
        return tuple(names)
    names = ["text_output"]
    for name in ("finish_reason", "num_input_tokens", "num_output_tokens"):
        if values.get(f"return_{name}"):
            names.append(name)
    return tuple(names)


def _zopilot_id(request_id: str) -> str:
    """The KServe id as our request id (logs, errors) when it fits our rules."""
    return request_id if len(request_id) <= 128 and request_id.isprintable() else ""


def _response(
    plan: InferPlan,
    chunk: Chunk,
    completion: Completion | None,
    *,
    first: bool,
    final: bool | None = None,
) -> kpb.ModelInferResponse:
    """One response: the requested outputs of ``chunk`` (text with the prompt first when
    the output includes it); ``final`` sets triton_final_response (streams only)."""
    response = kpb.ModelInferResponse(
        model_name=plan.model_name, model_version=MODEL_VERSION, id=plan.id
    )
    values: dict[str, str | int] = {
        "text_output": (plan.prefix if first else "") + chunk.text,
        "num_input_tokens": len(plan.request.input_ids),
        "num_output_tokens": (
            completion.usage.generated_tokens
            if completion is not None and not plan.stream
            else len(chunk.tokens)
        ),
        "finish_reason": FINISH_REASONS[completion.finish_reason] if completion else "None",
    }
    for name in plan.outputs:
        spec = OUTPUTS[name]
        response.outputs.add(name=name, datatype=spec.datatype, shape=[1])
        response.raw_output_contents.append(raw_output(spec.datatype, values[name]))
    if final is not None:
        response.parameters[FINAL].bool_param = final
    return response


def _stream(response: kpb.ModelInferResponse) -> kpb.ModelStreamInferResponse:
    return kpb.ModelStreamInferResponse(infer_response=response)


def stream_request_limit(config: Any) -> int:
    """Requests one ModelStreamInfer stream may have in flight: what the engine can hold
    at all (the batch plus its queue). More are answered RESOURCE_EXHAUSTED at once, so
    a client flooding a stream with ids costs neither memory nor the others' turns."""
    return config.max_batch_size + config.max_queue


_DONE = object()
# Responses waiting for the client to read them. When it does not read, the requests
# stop at this bound and the reader stops reading (HTTP/2 flow control does the rest).
_OUTBOX = 64


class _StreamSession:
    """One ModelStreamInfer call: a reader spawning a task per request, their responses
    merged into one outbox that the handler writes in arrival order."""

    def __init__(self, servicer: KServeServicer, context: grpc.aio.ServicerContext, limit: int):
        self._servicer = servicer
        self._context = context
        self._limit = limit
        self._outbox: asyncio.Queue[Any] = asyncio.Queue(_OUTBOX)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids: set[str] = set()

    async def run(self, requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                item = await self._outbox.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(reader, *self._tasks, return_exceptions=True)

    async def _read(self, requests: AsyncIterable[Any]) -> None:
        try:
            async for request in requests:
                await self._admit(request)
            # Half-closed: the requests already sent finish, then the stream ends.
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the handler, mapped there
            await self._outbox.put(exc)
            return
        await self._outbox.put(_DONE)

    async def _admit(self, request: Any) -> None:
        if isinstance(request, MalformedRequest):
            await self._outbox.put(_error("", refuse_malformed(request)))
            return
        request_id = request.id
        if len(self._tasks) >= self._limit:
            error = ResourceExhausted(
                f"this stream already has {self._limit} requests in flight; wait for their "
                "final responses or use another stream",
                retry_after_s=1.0,
            )
            await self._outbox.put(_error(request_id, error))
            return
        if request_id and request_id in self._ids:
            error = InvalidArgument.single("id", "a request with this id is still in flight")
            await self._outbox.put(_error(request_id, error))
            return
        self._ids.add(request_id)
        task = asyncio.create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: kpb.ModelInferRequest) -> None:
        try:
            async for response in self._servicer.stream_responses(request, self._context):
                await self._outbox.put(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one request's failure, not the stream's
            await self._outbox.put(_error(request.id, to_service_error(exc, request.id)))
        finally:
            self._ids.discard(request.id)


def _error(request_id: str, error: ServiceError) -> kpb.ModelStreamInferResponse:
    """A failed request on a stream: its id, and the status as text (the stream goes on)."""
    prefix = f"[request id: {_zopilot_id(request_id) or '-'}] " if request_id else ""
    return kpb.ModelStreamInferResponse(
        error_message=f"{prefix}{error.code.name}: {error.message}",
        infer_response=kpb.ModelInferResponse(id=request_id),
    )


__all__ = ["SERVICE", "KServeServicer", "stream_request_limit"]
