"""Builds and runs the grpc.aio server: services, health, reflection, the RPC chain, shutdown.

Lifecycle: the port opens first with health NOT_SERVING, so orchestrators see a live but
unready process while the model loads (generation RPCs answer UNAVAILABLE meanwhile);
health turns SERVING once the model is loaded. SIGTERM / SIGINT set an event; we then
report NOT_SERVING, give in-flight RPCs the grace period and stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from zopilot_client.pb import documents_pb2, documents_pb2_grpc, generation_pb2, generation_pb2_grpc

from . import metrics, reflection, security, tracing
from .auth import ApiKey, ApiKeyAuth, HealthWatchLimit
from .config import ServerConfig
from .documents.server.servicer import DocumentsServicer
from .generation.api.servicer import GenerationServicer
from .generation.engine import GenerationEngine, arena_budget, batch_limits
from .generation.loading.model_loader import LoadedModel, load_model
from .loop_bridge import settle_threadsafe
from .protocols.serving import SELF_PARSING_STREAMS, add_protocols
from .rpc_chain import Chain, ErrorMapping, Link, MalformedRequests

log = logging.getLogger(__name__)

GENERATION_SERVICE = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name
DOCUMENTS_SERVICE = documents_pb2.DESCRIPTOR.services_by_name["Documents"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL = ""  # the health service name for "the whole server"

SEND_LIMIT_BYTES = 256 * 1024 * 1024


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Channel arguments, each chosen on purpose."""
    return [
        *_connection_limits(config),
        # Documents arrive whole in one message: accept the largest allowed document plus
        # room for the other fields; DocumentParse still names the limit when exceeded.
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        # Parsed spreadsheets can be several times larger than their source file.
        ("grpc.max_send_message_length", SEND_LIMIT_BYTES),
        # Ping idle connections every 30 s so a vanished client's stream is noticed (and
        # its generation cancelled) even when no tokens flow; give up after 10 s.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Let clients keep long streams alive with their own pings, at most every 10 s,
        # also between calls, without the server answering GOAWAY "too_many_pings".
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _connection_limits(config: ServerConfig) -> list[tuple[str, int]]:
    """What one connection may hold: bounded streams, and a bounded life, so that calls
    a client never finishes (a half-closed call without a message gets no handler, and so
    no status) or never reads end with the connection instead of living forever."""
    # Well above what admission holds, so a burst is answered (RESOURCE_EXHAUSTED with
    # RetryInfo) rather than refused by the transport (RST_STREAM: "Stream removed").
    options = [("grpc.max_concurrent_streams", config.streams_per_connection)]
    if config.max_connection_age_s > 0:
        # GOAWAY after this age (clients reconnect transparently); calls still open then
        # get the grace below, after which the connection is closed under them.
        options.append(("grpc.max_connection_age_ms", round(config.max_connection_age_s * 1000)))
        options.append(
            ("grpc.max_connection_age_grace_ms", round(config.max_connection_age_grace_s * 1000))
        )
    if config.max_connection_idle_s > 0:
        # A connection with no call for this long is closed (GOAWAY).
        options.append(("grpc.max_connection_idle_ms", round(config.max_connection_idle_s * 1000)))
    return options


def rpc_links(config: ServerConfig) -> list[Link]:
    """The RPC chain's links, outermost first, in the order rpc_chain.py documents."""
    key_text = security.api_key(config)
    key = ApiKey(key_text) if key_text else None
    tracer = tracing.make_tracer(config.otlp_endpoint) if config.otlp_endpoint else None
    links: list[Link] = [metrics.Metrics()]
    if key is not None:
        links.append(ApiKeyAuth(key))
    links += [
        HealthWatchLimit(config.max_health_watches, key),
        MalformedRequests(answered_by_handler=SELF_PARSING_STREAMS),
        tracing.Tracing(tracer),
        ErrorMapping(),
    ]
    return links


@dataclass
class RunningServer:
    """A started server and the parts tests and shutdown need to reach."""

    server: grpc.aio.Server
    port: int
    config: ServerConfig
    health: health.aio.HealthServicer
    generation: GenerationServicer
    documents: DocumentsServicer
    # Done once the model is loaded and health says SERVING (raises if the load failed).
    load_task: asyncio.Task[None] | None = None
    serving: bool = False
    # False while the parser's workers cannot start: Documents is NOT_SERVING then.
    documents_ok: bool = True
    _health_tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    metrics_http: metrics.MetricsHttpServer | None = None
    # KServe / TGIS service names (--protocols): their health follows the server's.
    protocol_services: tuple[str, ...] = ()
    _hurried: bool = False

    def engine_load(self) -> Any | None:
        """For the metrics gauges: the engine's load, None while the model loads."""
        return self.engine.load() if self.engine is not None else None

    def parser_load(self) -> tuple[int, int] | None:
        """For the metrics gauges: (parser workers busy, documents waiting)."""
        pool = self.documents.parser.pool
        if pool is None:
            return None
        stats = pool.stats()
        return stats.busy, stats.waiting

    @property
    def engine(self) -> GenerationEngine | None:
        return self.generation.engine

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.serving = serving
        for name in (OVERALL, GENERATION_SERVICE, *self.protocol_services):
            await self.health.set(name, status)
        await self._set_documents_health()

    async def _set_documents_health(self) -> None:
        ok = self.serving and self.documents_ok
        status = health_pb2.HealthCheckResponse
        await self.health.set(DOCUMENTS_SERVICE, status.SERVING if ok else status.NOT_SERVING)

    def documents_health_changed(self, ok: bool) -> None:
        """Called by the parser (on the loop) when its workers stop or resume starting."""
        self.documents_ok = ok
        task = asyncio.get_running_loop().create_task(self._set_documents_health())
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def stop(self, grace: float | None = None) -> None:
        """Drain so that no answer is lost (docs/operations.md, "Draining"): NOT_SERVING;
        requests still queued are refused at once (UNAVAILABLE + RetryInfo: another
        replica takes them); running generations finish, or end with SHUTDOWN and their
        text shortly before the grace runs out; then the server stops and the scheduler
        thread is joined, so no model step is running when the process exits."""
        grace = self.config.grace_period_s if grace is None else grace
        log.info("draining (grace %.1f s)", grace)
        await self.health.enter_graceful_shutdown()
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        if self.engine is not None:
            # The engine ends what still runs by this deadline, even mid-step; the last
            # stretch of the grace is for those final chunks to reach the clients.
            self.engine.drain(max(0.0, grace - final_chunk_s(grace)))
        stopping = asyncio.create_task(self.server.stop(grace))
        await self._cut_short_when_idle(stopping)
        await stopping
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        await self.documents.close()
        self.close_metrics()
        log.info("stopped")

    async def _cut_short_when_idle(self, stopping: asyncio.Task[None]) -> None:
        """Once no generation runs or waits and no document is being parsed, what still
        holds the drain (health Watch streams, calls whose client stalled or never sent
        its whole request) would hold it for the rest of the grace, for nothing: give
        those a moment, then cancel them (UNAVAILABLE)."""
        while not stopping.done():
            if self._idle():
                await asyncio.wait({stopping}, timeout=IDLE_CONFIRM_S)
                if self._idle() and not stopping.done():
                    log.info("nothing left to drain but idle calls; stopping now")
                    await self.server.stop(FINAL_CHUNK_S)
                return
            await asyncio.wait({stopping}, timeout=IDLE_CONFIRM_S)

    def _idle(self) -> bool:
        load = self.engine_load()
        parser = self.parser_load()
        engine_idle = load is None or (load.running == 0 and load.waiting == 0)
        return engine_idle and (parser is None or parser == (0, 0))

    def hurry(self) -> None:
        """A second SIGTERM / SIGINT during the drain: end it now. Running generations end
        with SHUTDOWN and their text at once; the calls still open get a moment for that
        last chunk, then are cancelled (UNAVAILABLE)."""
        if self._hurried:
            return
        self._hurried = True
        log.info("second signal: ending the drain now")
        if self.engine is not None:
            self.engine.drain(0.0)
        task = asyncio.get_running_loop().create_task(self.server.stop(FINAL_CHUNK_S))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    def close_metrics(self) -> None:
        metrics.unbind(self)
        if self.metrics_http is not None:
            self.metrics_http.close()
            self.metrics_http = None


IDLE_CONFIRM_S = 0.2  # how long the server must stay idle before a drain is cut short
FINAL_CHUNK_S = 1.0  # for the last chunks to reach clients once the engine ended them


def final_chunk_s(grace: float) -> float:
    """The end of the grace kept for final chunks to reach clients after the engine ended
    the generations (a second or a fifth of the grace, whichever is shorter)."""
    return min(FINAL_CHUNK_S, grace * 0.2)


ModelLoader = Callable[[ServerConfig], LoadedModel]
T = TypeVar("T")


async def start_server(config: ServerConfig, loader: ModelLoader = load_model) -> RunningServer:
    """Bind, start serving health/reflection at once, and load the model in the background."""
    # Auth, malformed requests, metrics, tracing and error mapping: one chain (rpc_chain.py).
    chain = Chain(rpc_links(config))
    credentials = security.server_credentials(config)
    server = grpc.aio.server(options=grpc_options(config), interceptors=[chain])
    health_servicer = health.aio.HealthServicer()
    generation = GenerationServicer(config)
    documents = DocumentsServicer(config, engine=lambda: generation.engine)
    own: tuple[str, ...] = ()
    if "zopilot" in config.protocol_set:
        generation_pb2_grpc.add_GenerationServicer_to_server(generation, server)
        documents_pb2_grpc.add_DocumentsServicer_to_server(documents, server)
        own = (GENERATION_SERVICE, DOCUMENTS_SERVICE)
    protocol_services = add_protocols(server, config, generation)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, (*own, HEALTH_SERVICE, *protocol_services))
    address = f"{config.host}:{config.port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    running = RunningServer(server, port, config, health_servicer, generation, documents)
    running.protocol_services = protocol_services
    documents.parser.on_health = running.documents_health_changed
    if config.metrics_port:
        running.metrics_http = metrics.MetricsHttpServer(config.host, config.metrics_port)
    metrics.bind(running)
    await running.set_serving(False)
    await server.start()
    log.info(
        "listening on %s:%d%s (loading model, health NOT_SERVING)",
        config.host,
        port,
        " with TLS" + (" (client certificates required)" if config.tls_client_ca else "")
        if credentials is not None
        else "",
    )
    running.load_task = asyncio.create_task(_load(running, loader))
    return running


async def _in_daemon_thread(fn: Callable[[ServerConfig], T], config: ServerConfig) -> T:
    """Run the (uninterruptible) model load in a daemon thread.

    ``asyncio.to_thread`` would use the default executor, which ``asyncio.run`` joins at
    exit: a SIGTERM during a long load would then leave the process waiting for the load
    to finish. A daemon thread dies with the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn(config)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            settle_threadsafe(loop, future, None, exc)
        else:
            settle_threadsafe(loop, future, result, None)

    threading.Thread(target=run, name="model-load", daemon=True).start()
    return await future


async def _load(running: RunningServer, loader: ModelLoader) -> None:
    # Parser workers start in the background while the model loads (they need no model).
    await running.documents.start()
    config = running.config

    def load_engine(config: ServerConfig) -> GenerationEngine:
        return GenerationEngine(
            loader(config),
            limits=batch_limits(config),
            budget=arena_budget(config),
            prefix_cache=config.prefix_cache == "on",
            speculative_ngram=(config.speculative_ngram_min, config.speculative_ngram_max),
            stream_interval_s=config.stream_interval_ms / 1000,
            adapters=config.lora_adapters,
            max_loras=config.max_loras,
            max_lora_rank=config.max_lora_rank,
        )

    # The engine is built (arena, self test) in the load thread too, which then ends: the
    # scheduler thread must be the only live thread that has run torch's parallel regions.
    # Each such thread keeps its own OpenMP team, and with more team threads than cores
    # GNU OpenMP stops spinning between regions: measured here, a decode step on the
    # scheduler thread took 1.4-2x longer once the event-loop thread had run the self test.
    engine = await _in_daemon_thread(load_engine, config)
    metrics.set_model_name(engine.loaded.model_id)
    running.generation.engine = engine
    engine.observe_steps(metrics.observe_batch_size)
    await running.set_serving(True)
    target = f"{config.host}:{running.port}"
    log.info("ready: health SERVING on %s", target)
    tls = bool(config.tls_cert)
    log.info(
        'try: grpcurl %s -d \'{"prompt": "Hello"}\' %s '
        "zopilot.v1.Generation/GenerateStream   (or: zopilot --target %s%s generate Hello)",
        "-cacert CA.pem" if tls else "-plaintext",
        target,
        target,
        " --tls-ca CA.pem" if tls else "",
    )


async def serve(config: ServerConfig, loader: ModelLoader = load_model) -> int:
    """Run until SIGTERM / SIGINT; return the process exit code."""
    running = await start_server(config, loader)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    assert running.load_task is not None
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(
        {running.load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
    )
    if running.load_task in done and running.load_task.exception() is not None:
        stop_task.cancel()
        await running.server.stop(0)
        await running.documents.close()  # its workers started before the model load
        running.close_metrics()
        raise running.load_task.exception()  # type: ignore[misc]
    await stop.wait()
    log.info("signal received")
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, running.hurry)  # a second signal ends the drain now
    await running.stop()
    return 0
