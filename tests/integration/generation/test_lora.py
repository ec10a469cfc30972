"""LoRA adapters per request (docs/adapters.md): adapters made here with peft on the tiny
random Llama (random A and B, so the text changes), served over real gRPC, each row's
greedy tokens compared with transformers' ``generate`` of the base with that adapter
merged (peft's ``merge_and_unload``), alone and mixed in one packed forward; then every
hostile case of the flags, fields and RPCs, the server serving on after each."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from model_builders import make_adapter
from support import (
    InProcessServer,
    field_violations,
    free_port,
    greedy_tokens,
    wait_until,
)
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.config import ServerConfig, load_config
from zopilot_server.generation.domain import AdapterRejected, GenerationRequest
from zopilot_server.generation.kv.kv_arena import ArenaSize
from zopilot_server.generation.kv.prefix_cache import BLOCK_TOKENS, PrefixIndex
from zopilot_server.generation.loading.adapters import AdapterRegistry
from zopilot_server.generation.loading.model_loader import load_model
from zopilot_server.generation.model import lora
from zopilot_server.generation.model.runner import ModelRunner
from zopilot_server.generation.sched.plan import Plan, PrefillChunk, RowSpec

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "The old lighthouse keeper wrote"
N = 12  # tokens per comparison


def merged_greedy(base_dir: Path, adapter_dir: Path | None, ids: list[int], n: int) -> list[int]:
    """transformers' greedy tokens of the base, with ``adapter_dir`` merged into it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return greedy_tokens(model, ids, n)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "alpha": make_adapter(tiny_model_dir, root / "alpha", rank=8, targets=ALL_MODULES, seed=1),
        "beta": make_adapter(
            tiny_model_dir, root / "beta", rank=4, targets=["q_proj", "v_proj"], seed=2
        ),
        "big": make_adapter(tiny_model_dir, root / "big", rank=16, targets=["q_proj"], seed=3),
    }
    # Another base: the same architecture and module names, hidden size 32 instead of 64.
    from transformers import AutoModelForCausalLM, LlamaConfig

    other = LlamaConfig.from_pretrained(str(tiny_model_dir))
    other.hidden_size, other.intermediate_size = 32, 64
    other_dir = root / "other-base"
    AutoModelForCausalLM.from_config(other).save_pretrained(str(other_dir))
    made["wrong-base"] = make_adapter(
        other_dir, root / "wrong-base", rank=4, targets=["q_proj"], seed=4
    )
    corrupt = root / "corrupt"
    shutil.copytree(made["alpha"], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\xff" * 64 + b"not safetensors")
    made["corrupt"] = corrupt
    made["empty"] = root / "empty"
    made["empty"].mkdir()
    no_weights = root / "no-weights"
    no_weights.mkdir()
    shutil.copy(made["alpha"] / "adapter_config.json", no_weights)
    made["no-weights"] = no_weights
    return made


@pytest.fixture(scope="module")
def server(tiny_config: ServerConfig, adapters: dict[str, Path]) -> Iterator[InProcessServer]:
    config = dataclasses.replace(
        tiny_config,
        lora=(f"alpha={adapters['alpha']}", f"beta={adapters['beta']}"),
        max_loras=3,
        max_lora_rank=8,
        adapter_admin=True,
        metrics_port=free_port(),
    )
    running = InProcessServer(config)
    yield running
    running.stop()


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[generation_pb2_grpc.GenerationStub]:
    with server.channel() as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


@pytest.fixture(scope="module")
def prompt_ids(server: InProcessServer) -> list[int]:
    with server.channel() as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return list(stub.Tokenize(pb.TokenizeRequest(text=PROMPT)).ids)


@pytest.fixture(scope="module")
def reference(
    tiny_model_dir: Path, adapters: dict[str, Path], prompt_ids: list[int]
) -> dict[str, list[int]]:
    return {
        name: merged_greedy(tiny_model_dir, adapters.get(name), prompt_ids, N)
        for name in ("alpha", "beta", "")
    }


def generate(stub: Any, adapter: str, prompt: str = PROMPT, n: int = N, **kw: Any) -> Any:
    request = pb.GenerateRequest(
        prompt=prompt,
        adapter=adapter,
        max_new_tokens=n,
        min_new_tokens=n,
        return_token_details=True,
        **kw,
    )
    return stub.Generate(request, timeout=60)


def ids(response: Any) -> list[int]:
    return [t.id for t in response.tokens]


# -- exactness -------------------------------------------------------------------------
def test_each_adapter_alone_equals_the_merged_model(
    stub: Any, reference: dict[str, list[int]]
) -> None:
    assert len({tuple(v) for v in reference.values()}) == 3, "the adapters must change the text"
    for name in ("alpha", "beta", ""):
        response = generate(stub, name)
        assert ids(response) == reference[name], name
        assert response.usage.adapter == name


def test_concurrent_requests_with_different_adapters_each_equal_the_merged_model(
    server: InProcessServer, reference: dict[str, list[int]]
) -> None:
    names = ["alpha", "beta", "", "alpha", "beta", ""]
    got: dict[int, list[int]] = {}

    def run(i: int) -> None:
        with server.channel() as channel:
            got[i] = ids(generate(generation_pb2_grpc.GenerationStub(channel), names[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {i: got.get(i) for i in range(len(names))} == {
        i: reference[name] for i, name in enumerate(names)
    }


def test_one_packed_forward_mixing_adapters_and_base_rows_is_exact(
    tiny_model_dir: Path,
    model_cache_dir: Path,
    adapters: dict[str, Path],
    prompt_ids: list[int],
    reference: dict[str, list[int]],
) -> None:
    """The runner itself: three rows (alpha, beta, none) prefilled in one forward, then
    decoded together, every step one packed forward with three token groups."""
    loaded = load_model(ServerConfig(model=str(tiny_model_dir), cache_dir=str(model_cache_dir)))
    runner = ModelRunner(loaded, ArenaSize(slots=4, tokens_per_slot=64, bytes=0))
    registry = AdapterRegistry(loaded.model, max_loras=2, max_rank=8)
    registry.on_load.append(lambda adapter: lora.install(loaded.model, adapter))
    chosen = {
        "alpha": registry.load("alpha", str(adapters["alpha"])),
        "beta": registry.load("beta", str(adapters["beta"])),
        "": None,
    }
    keys = {name: i for i, name in enumerate(chosen)}
    runner.add(
        [
            RowSpec(keys[name], GenerationRequest(name, tuple(prompt_ids), False, N, adapter=a))
            for name, a in chosen.items()
        ]
    )
    out: dict[int, list[int]] = {k: [] for k in keys.values()}
    plan = Plan(chunks=tuple(PrefillChunk(k, 0, len(prompt_ids)) for k in keys.values()))
    for _ in range(N):
        for step in runner.step(plan):
            out[step.key].append(step.token_id)
            runner.rows[step.key].next_input = step.token_id
        plan = Plan(decode=tuple(keys.values()))
    assert {name: out[k] for name, k in keys.items()} == reference
    assert chosen["alpha"].running == 1  # type: ignore[union-attr]
    runner.remove(list(keys.values()))
    assert chosen["alpha"].running == 0  # type: ignore[union-attr]


# -- the prefix cache --------------------------------------------------------------------
def test_prefix_index_keeps_namespaces_apart() -> None:
    index = PrefixIndex(3, "m")
    prompt = list(range(3 * BLOCK_TOKENS + 1))
    index.claim(0, 0, private=False, namespace="lora:a#1")
    index.extend(0, prompt)
    assert index.longest(prompt, namespace="lora:a#1").tokens == 3 * BLOCK_TOKENS  # type: ignore[union-attr]
    assert index.longest(prompt) is None
    assert index.longest(prompt, namespace="lora:b#2") is None
    index.released(0)
    index.claim(0, 2 * BLOCK_TOKENS, private=False)  # taken by a base row: nothing kept
    assert index.longest(prompt, namespace="lora:a#1") is None


def test_prefix_reuse_never_crosses_adapters(stub: Any, reference: dict[str, list[int]]) -> None:
    long_prompt = "A shared system prompt that many users send, word after word. " * 6
    base = generate(stub, "", prompt=long_prompt, n=4)
    again = generate(stub, "", prompt=long_prompt, n=4)
    assert again.usage.cached_input_tokens >= BLOCK_TOKENS, "the base rows share their prefix"
    first = generate(stub, "alpha", prompt=long_prompt, n=4)
    assert first.usage.cached_input_tokens == 0, "alpha must not read the base rows' KV"
    other = generate(stub, "beta", prompt=long_prompt, n=4)
    assert other.usage.cached_input_tokens == 0, "beta must not read alpha's KV"
    second = generate(stub, "alpha", prompt=long_prompt, n=4)
    assert second.usage.cached_input_tokens >= BLOCK_TOKENS
    assert ids(second) == ids(first) and ids(again) == ids(base)
    assert ids(first) != ids(base)


# -- visible ---------------------------------------------------------------------------
def test_model_info_and_list_adapters(stub: Any, adapters: dict[str, Path]) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    listed = stub.ListAdapters(pb.ListAdaptersRequest())
    assert info.max_loras == listed.max_loras == 3
    assert info.max_lora_rank == listed.max_lora_rank == 8
    by_name = {a.name: a for a in listed.adapters}
    assert {"alpha", "beta"} <= set(by_name)
    alpha, beta = by_name["alpha"], by_name["beta"]
    assert alpha.rank == 8 and alpha.scaling == pytest.approx(2.0)
    assert sorted(alpha.target_modules) == sorted(ALL_MODULES)
    assert sorted(beta.target_modules) == ["q_proj", "v_proj"] and beta.rank == 4
    assert alpha.path == str(adapters["alpha"])
    # alpha: 2 layers x 7 modules x r x (in + out) floats
    hidden, inter, kv = 64, 128, 32
    sizes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    sizes += [(hidden, inter), (hidden, inter), (inter, hidden)]
    assert alpha.bytes == 2 * sum(8 * (i + o) * 4 for i, o in sizes)
    assert {a.name for a in info.adapters} == set(by_name)


def _scrape(port: int, name: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return [line for line in reply.read().decode().splitlines() if line.startswith(name)]


def test_metrics_per_adapter_and_lora_requests_info(server: InProcessServer, stub: Any) -> None:
    port = server.config.metrics_port

    def requests_of(adapter: str) -> float:
        lines = _scrape(port, "zopilot_lora_requests_total")
        return sum(float(x.rsplit(" ", 1)[1]) for x in lines if f'adapter="{adapter}"' in x)

    before = requests_of("beta")
    generate(stub, "beta", n=3)
    generate(stub, "", n=3)
    assert wait_until(lambda: requests_of("beta") == before + 1, timeout=10)
    tokens = _scrape(port, "zopilot_lora_generation_tokens_total")
    assert any('adapter="beta"' in line for line in tokens)
    assert not any('adapter=""' in line for line in tokens), "base rows are not an adapter"
    request = pb.GenerateRequest(
        prompt=PROMPT, adapter="alpha", max_new_tokens=2000, ignore_eos=True
    )
    stream = stub.GenerateStream(request, timeout=120)
    next(stream)
    (info,) = _scrape(port, "zopilot_lora_requests_info{")
    assert 'running_lora_adapters="alpha"' in info and 'max_lora="3"' in info
    assert 'waiting_lora_adapters=""' in info
    stream.cancel()
    engine = server.running.generation.engine
    assert wait_until(lambda: engine.load().running_adapters == (), timeout=20)
    (info,) = _scrape(port, "zopilot_lora_requests_info{")
    assert 'running_lora_adapters=""' in info


# -- load, use, unload -----------------------------------------------------------------
def test_unload_while_streaming_lets_the_stream_finish(
    server: InProcessServer, stub: Any, adapters: dict[str, Path]
) -> None:
    loaded = stub.LoadAdapter(pb.LoadAdapterRequest(name="gamma", path=str(adapters["beta"])))
    assert loaded.name == "gamma" and loaded.rank == 4
    plain = ids(generate(stub, "gamma"))
    assert plain == ids(generate(stub, "beta")), "the same files give the same text"
    request = pb.GenerateRequest(
        prompt=PROMPT, adapter="gamma", max_new_tokens=300, ignore_eos=True
    )
    stream = stub.GenerateStream(request, timeout=120)
    next(stream)  # it runs
    unloaded = stub.UnloadAdapter(pb.UnloadAdapterRequest(name="gamma"))
    assert unloaded.running_requests == 1
    with pytest.raises(grpc.RpcError) as refused:
        generate(stub, "gamma")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gamma" in refused.value.details()
    chunks = list(stream)
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.generated_tokens == 300 and chunks[-1].usage.adapter == "gamma"
    with pytest.raises(grpc.RpcError) as again:
        stub.UnloadAdapter(pb.UnloadAdapterRequest(name="gamma"))
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gamma" not in {a.name for a in stub.ListAdapters(pb.ListAdaptersRequest()).adapters}
    # the name is free again
    stub.LoadAdapter(pb.LoadAdapterRequest(name="gamma", path=str(adapters["alpha"])))
    assert ids(generate(stub, "gamma")) == ids(generate(stub, "alpha"))
    stub.UnloadAdapter(pb.UnloadAdapterRequest(name="gamma"))


def test_a_cancelled_stream_releases_its_adapter(server: InProcessServer, stub: Any) -> None:
    engine = server.running.generation.engine
    alpha = engine.adapters.get("alpha")
    request = pb.GenerateRequest(
        prompt=PROMPT, adapter="alpha", max_new_tokens=2000, ignore_eos=True
    )
    stream = stub.GenerateStream(request, timeout=120)
    next(stream)
    assert alpha.running == 1
    stream.cancel()
    assert wait_until(lambda: alpha.running == 0, timeout=20)
    assert ids(generate(stub, "alpha")) == ids(generate(stub, "alpha"))


# -- hostile ---------------------------------------------------------------------------
def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_bad_adapter_fields_in_generate(stub: Any, reference: dict[str, list[int]]) -> None:
    code, details = _code(lambda: generate(stub, "nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope' is not loaded" in details
    for bad in ("x" * 65, "a\nb", "../alpha", "alpha beta"):
        with pytest.raises(grpc.RpcError) as error:
            generate(stub, bad)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "adapter" in field_violations(error.value)
        assert "\n" not in error.value.details()
    assert ids(generate(stub, "alpha")) == reference["alpha"], "the server serves on"


@pytest.mark.parametrize(
    ("adapter", "code", "words"),
    [
        ("wrong-base", grpc.StatusCode.FAILED_PRECONDITION, "64 -> 64 in the base model but 32"),
        (
            "big",
            grpc.StatusCode.INVALID_ARGUMENT,
            "rank 16 is over this server's --max-lora-rank 8",
        ),
        ("corrupt", grpc.StatusCode.INVALID_ARGUMENT, "not a valid safetensors file"),
        ("empty", grpc.StatusCode.INVALID_ARGUMENT, "adapter_config.json is missing"),
        ("no-weights", grpc.StatusCode.INVALID_ARGUMENT, "adapter_model.safetensors is missing"),
        ("/no/such/dir", grpc.StatusCode.INVALID_ARGUMENT, "not a directory"),
    ],
)
def test_load_adapter_refuses_what_does_not_fit(
    stub: Any, adapters: dict[str, Path], adapter: str, code: grpc.StatusCode, words: str
) -> None:
    path = str(adapters.get(adapter, adapter))
    got, details = _code(lambda: stub.LoadAdapter(pb.LoadAdapterRequest(name="x", path=path)))
    assert got == code and words in details, details
    assert "x" not in {a.name for a in stub.ListAdapters(pb.ListAdaptersRequest()).adapters}
    assert len(generate(stub, "beta", n=2).tokens) == 2, "the server serves on"


def test_load_adapter_names_and_limits(stub: Any, adapters: dict[str, Path]) -> None:
    alpha = str(adapters["alpha"])
    code, _ = _code(lambda: stub.LoadAdapter(pb.LoadAdapterRequest(name="alpha", path=alpha)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for bad in ("", "a/b", "x" * 65):
        code, _ = _code(
            lambda bad=bad: stub.LoadAdapter(pb.LoadAdapterRequest(name=bad, path=alpha))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Two loads of one name at once: one wins, the other is told it exists.
    results: list[Any] = []

    def load() -> None:
        try:
            results.append(stub.LoadAdapter(pb.LoadAdapterRequest(name="twin", path=alpha)).name)
        except grpc.RpcError as error:
            results.append(error.code())

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(map(str, results)) == sorted(["twin", str(grpc.StatusCode.ALREADY_EXISTS)])
    # alpha, beta, twin: --max-loras 3 is reached
    code, details = _code(lambda: stub.LoadAdapter(pb.LoadAdapterRequest(name="four", path=alpha)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-loras" in details
    stub.UnloadAdapter(pb.UnloadAdapterRequest(name="twin"))
    code, _ = _code(lambda: stub.UnloadAdapter(pb.UnloadAdapterRequest(name="never")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_admin_rpcs_are_off_without_the_flag(
    tiny_server: InProcessServer, adapters: dict[str, Path]
) -> None:
    with tiny_server.channel() as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        request = pb.LoadAdapterRequest(name="alpha", path=str(adapters["alpha"]))
        code, details = _code(lambda: stub.LoadAdapter(request))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "--adapter-admin" in details
        code, _ = _code(lambda: stub.UnloadAdapter(pb.UnloadAdapterRequest(name="alpha")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert list(stub.ListAdapters(pb.ListAdaptersRequest()).adapters) == []


def test_lora_flag_parsing() -> None:
    config = load_config(["--lora", "a=/x", "--lora", "b=/y=z"], env={})
    assert config.lora_adapters == [("a", "/x"), ("b", "/y=z")]
    assert load_config([], env={"ZOPILOT_LORA": "a=/x,b=/y"}).lora == ("a=/x", "b=/y")
    assert load_config([], env={}).lora == ()
    for argv in (["--lora", "nopath"], ["--lora", "a="], ["--lora", "a=/x", "--lora", "a=/y"]):
        with pytest.raises(SystemExit):
            load_config(argv, env={})
    with pytest.raises(SystemExit):
        load_config(["--lora", "a=/x", "--lora", "b=/y", "--max-loras", "1"], env={})


def test_a_bad_adapter_at_start_stops_the_start(
    tiny_config: ServerConfig, adapters: dict[str, Path]
) -> None:
    config = dataclasses.replace(tiny_config, lora=(f"bad={adapters['wrong-base']}",))
    server = InProcessServer(config, wait_ready=False)
    try:
        with pytest.raises(AdapterRejected, match="trained for another base"):
            server.wait_ready()
    finally:
        server.stop()


# -- the other protocols -------------------------------------------------------------
def test_tgis_adapter_id_routes_to_the_adapter(
    tgis: Any,
    server: InProcessServer,
    stub: Any,
) -> None:
    tpb, tgrpc = tgis
    want = {name: generate(stub, name).text for name in ("alpha", "beta", "")}
    params = tpb.Parameters(stopping=tpb.StoppingCriteria(max_new_tokens=N, min_new_tokens=N))
    with server.channel() as channel:
        tgis_stub = tgrpc.GenerationServiceStub(channel)
        for name in ("alpha", "beta", ""):
            single = tpb.SingleGenerationRequest(
                adapter_id=name, request=tpb.GenerationRequest(text=PROMPT), params=params
            )
            assert "".join(r.text for r in tgis_stub.GenerateStream(single)) == want[name]
        batch = tpb.BatchedGenerationRequest(
            adapter_id="beta", requests=[tpb.GenerationRequest(text=PROMPT)] * 2, params=params
        )
        assert [r.text for r in tgis_stub.Generate(batch).responses] == [want["beta"]] * 2
        unknown = tpb.SingleGenerationRequest(
            adapter_id="nope", request=tpb.GenerationRequest(text=PROMPT), params=params
        )
        code, _ = _code(lambda: list(tgis_stub.GenerateStream(unknown)))
        assert code == grpc.StatusCode.NOT_FOUND
        bad = tpb.SingleGenerationRequest(
            adapter_id="a b", request=tpb.GenerationRequest(text=PROMPT), params=params
        )
        with pytest.raises(grpc.RpcError) as error:
            list(tgis_stub.GenerateStream(bad))
        assert "adapter_id" in field_violations(error.value)


def test_kserve_lora_name_routes_to_the_adapter(server: InProcessServer, stub: Any) -> None:
    import tritonclient.grpc as triton
    from kserve_calls import llm_inputs, model_name
    from tritonclient.utils import InferenceServerException

    name = model_name(server)
    with triton.InferenceServerClient(server.target) as client:
        for adapter in ("alpha", "beta"):
            want = generate(stub, adapter).text
            inputs = llm_inputs(PROMPT, max_tokens=N, min_tokens=N, lora_name=adapter)
            got = client.infer(name, inputs).as_numpy("text_output")[0].decode()
            assert got == PROMPT + want
        with pytest.raises(InferenceServerException) as unknown:
            client.infer(name, llm_inputs(PROMPT, max_tokens=2, lora_name="nope"))
        assert "NOT_FOUND" in str(unknown.value.status())
        with pytest.raises(InferenceServerException) as bad:
            client.infer(name, llm_inputs(PROMPT, max_tokens=2, lora_name=5))
        assert "INVALID_ARGUMENT" in str(bad.value.status())
        assert "lora_name" in bad.value.message()


# -- client library and CLI ------------------------------------------------------------
def test_client_library_and_cli(server: InProcessServer, stub: Any) -> None:
    import json

    import zopilot_client as zc
    from cli_tools import run_cli

    want = generate(stub, "alpha").text
    with zc.Client(server.target, timeout=60) as client:
        result = client.generate(PROMPT, adapter="alpha", max_new_tokens=N, min_new_tokens=N)
        assert result.text == want and result.usage.adapter == "alpha"
        info = client.model_info()
        assert {"alpha", "beta"} <= {a.name for a in info.adapters}
        assert info.max_loras == 3 and info.max_lora_rank == 8
        with pytest.raises(zc.NotFound):
            client.generate(PROMPT, adapter="nope", max_new_tokens=2)
    flags = ["--max-new-tokens", str(N), "--min-new-tokens", str(N)]
    printed = run_cli("generate", PROMPT, "--adapter", "alpha", *flags, target=server.target)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == want + "\n"
    listed = run_cli("adapters", "--json", target=server.target)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["max_loras"] == 3
    by_name = {a["name"]: a for a in data["adapters"]}
    assert by_name["alpha"]["rank"] == 8 and by_name["beta"]["target_modules"] == [
        "q_proj",
        "v_proj",
    ]
    table = run_cli("adapters", target=server.target)
    assert table.returncode == 0 and "alpha\trank 8\t" in table.stdout
    refused = run_cli("generate", PROMPT, "--adapter", "nope", target=server.target)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "'nope' is not loaded" in refused.stderr


def test_the_serial_runner_refuses_adapters(
    smollm2_dir: Path, model_cache_dir: Path, tmp_path: Path, adapters: dict[str, Path]
) -> None:
    """GPT-2 takes a legacy tuple cache in transformers 4.45: it runs serially, where
    adapters are refused (FAILED_PRECONDITION) rather than served by another path."""
    import transformers
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    from zopilot_server.generation.engine import ArenaBudget, GenerationEngine

    if int(transformers.__version__.split(".")[1]) >= 50:
        pytest.skip("this transformers' GPT-2 takes a Cache: it is not served serially")
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    loaded = load_model(ServerConfig(model=str(tmp_path), cache_dir=str(model_cache_dir)))
    engine = GenerationEngine(loaded, budget=ArenaBudget(memory_mib=16))
    try:
        assert engine.arena.mode == "serial"
        for attempt in (
            lambda: engine.adapters.load("alpha", str(adapters["alpha"])),
            lambda: engine.adapters.get("alpha"),
        ):
            with pytest.raises(AdapterRejected, match="runs serially") as refused:
                attempt()
            assert refused.value.fits is False
    finally:
        engine.close()


def test_an_adapter_on_the_output_head_is_refused(
    tiny_model_dir: Path, tmp_path: Path, stub: Any
) -> None:
    from safetensors.torch import load_file, save_file

    path = make_adapter(tiny_model_dir, tmp_path / "head", rank=4, targets=["lm_head"], seed=5)
    weights = path / "adapter_model.safetensors"
    # peft also saves the (tied) head's base weight; keep only its LoRA pair
    save_file({k: v for k, v in load_file(str(weights)).items() if ".lora_" in k}, str(weights))
    request = pb.LoadAdapterRequest(name="head", path=str(path))
    code, details = _code(lambda: stub.LoadAdapter(request))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "output head" in details


def test_admin_rpcs_need_the_api_key(tiny_config: ServerConfig, adapters: dict[str, Path]) -> None:
    key = "lora-admin-key-0123456789"
    server = InProcessServer(dataclasses.replace(tiny_config, api_key=key, adapter_admin=True))
    try:
        with server.channel() as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            request = pb.LoadAdapterRequest(name="alpha", path=str(adapters["alpha"]))
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                code, _ = _code(lambda m=metadata: stub.LoadAdapter(request, metadata=m))
                assert code == grpc.StatusCode.UNAUTHENTICATED
            right = (("authorization", f"Bearer {key}"),)
            assert stub.LoadAdapter(request, metadata=right).name == "alpha"
            code, _ = _code(lambda: stub.UnloadAdapter(pb.UnloadAdapterRequest(name="alpha")))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            listed = stub.ListAdapters(pb.ListAdaptersRequest(), metadata=right)
            assert [a.name for a in listed.adapters] == ["alpha"]
    finally:
        server.stop()
