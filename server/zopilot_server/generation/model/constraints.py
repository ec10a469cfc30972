"""Structured output: a request's constraint compiled into a token-level grammar.

The grammar engine is llguidance (Rust, no dependencies, one abi3 wheel for Python 3.10
and later, about 0.05 ms per row and step for SmolLM2's 49k vocabulary on one CPU core;
why not xgrammar or outlines-core: docs/concepts/structured-output.md). A constraint is
compiled once (``ConstraintCompiler``: an LRU of compiled grammars keyed by kind and
text) into a prototype matcher that is never advanced; each request gets its own copy
(``Constraint.start``), which the runner asks for the allowed tokens before every step
and advances with the chosen token.

This module imports neither torch nor gRPC: the runner turns the mask into a tensor,
validation turns ``InvalidConstraint`` into a field violation.
"""

from __future__ import annotations

import collections
import copy
import importlib.metadata
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..domain import ConstraintKind, ConstraintUnavailable, InvalidConstraint

# JSON output on one line with a space after ',' and ':' (what a small model writes most
# readily), and no free whitespace: flexible whitespace lets a model pad a document with
# newlines until max_new_tokens instead of closing it.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CACHE_SIZE = 64


class ConstraintState:
    """One request's position in its grammar; used by the scheduler thread only."""

    def __init__(self, kind: ConstraintKind, matcher: Any) -> None:
        self.kind = kind
        self._matcher = matcher

    def allowed(self) -> bytes:
        """One byte per vocabulary id: 0 where the token would break the constraint."""
        return self._matcher.compute_logit_bias()

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            raise InvalidConstraint(self.kind.value, f"the grammar engine stopped: {self.error}")

    def rollback(self, tokens: int) -> None:
        """Undo the last ``tokens`` advances (a speculative step that is retried)."""
        self._matcher.rollback(tokens)

    @property
    def accepting(self) -> bool:
        """The output so far is complete: it may end here (and may go on)."""
        return bool(self._matcher.is_accepting())

    @property
    def finished(self) -> bool:
        """The output is complete and nothing more can follow."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        return _first_line(str(self._matcher.get_error())) or "no token can continue the output"


@dataclass(frozen=True, eq=False)
class Constraint:
    """A compiled constraint, shared by every request that sent the same one."""

    kind: ConstraintKind
    _prototype: Any  # llguidance.LLMatcher, never advanced: only copied

    def start(self) -> ConstraintState:
        """A fresh state at the grammar's start, for one request."""
        return ConstraintState(self.kind, self._prototype.deep_copy())


def grammar_engine() -> str:
    """The grammar engine and version ("" when it is not installed)."""
    try:
        return f"llguidance {importlib.metadata.version('llguidance')}"
    except importlib.metadata.PackageNotFoundError:
        return ""


class ConstraintCompiler:
    """Compiles constraints for one tokenizer; thread-safe; caches what it compiled.

    The llguidance view of the tokenizer takes about a second to build, so it is built
    on the first constrained request (in a validation thread, never on the event loop)
    rather than delaying every server start.
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._engine = grammar_engine()
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[ConstraintKind, str], Constraint] = (
            collections.OrderedDict()
        )

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def available(self) -> bool:
        return bool(self._engine) and bool(getattr(self._hf_tokenizer, "is_fast", False))

    def compile(self, kind: ConstraintKind, source: str) -> Constraint:
        """The compiled constraint for ``source`` (schema JSON text, regex, or the
        choice options as a JSON list); InvalidConstraint when it does not compile."""
        if not self.available:
            why = "the model's tokenizer is not a fast one" if self._engine else "no llguidance"
            raise ConstraintUnavailable(
                f"constrained decoding is not available on this server ({why}; "
                "GetModelInfo.constrained_decoding is false)"
            )
        key = (kind, source)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            tokenizer = self._llg_tokenizer()
        constraint = self._build(kind, source, tokenizer)
        with self._lock:
            self._cache[key] = constraint
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return constraint

    def _llg_tokenizer(self) -> Any:
        if self._tokenizer is None:
            import llguidance

            self._tokenizer = llguidance.LLTokenizer(
                _tokenizer_json(self._hf_tokenizer), n_vocab=self._vocab_size, eos_token=self._eos
            )
        return self._tokenizer

    def _build(self, kind: ConstraintKind, source: str, tokenizer: Any) -> Constraint:
        import llguidance

        grammar = _grammar(kind, source)
        # The matcher compiles under llguidance's default limits (grammar size, lexer
        # states, and the "fuel" that bounds work per compile and per token): a
        # hostile schema or regex fails with an error instead of taking a core.
        limits = llguidance.LLParserLimits(verbose_errors=False)  # no state dumps
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if matcher.is_error():
            raise InvalidConstraint(kind.value, _first_line(matcher.get_error()))
        return Constraint(kind, matcher)


def _tokenizer_json(hf_tokenizer: Any) -> str:
    """The fast tokenizer's definition as llguidance reads it.

    llguidance learns each token's bytes from the decoder. Tokenizers converted from
    GGUF (the embedded SmolLM2) decode byte-level tokens through a Sequence that starts
    with ByteFallback, which llguidance takes for a SentencePiece vocabulary: every
    "Ġ" (space) token would then carry the wrong bytes. A byte-level pre-tokenizer
    means byte-level tokens, so the decoder is reduced to its ByteLevel step.
    """
    backend = copy.copy(hf_tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    spec = json.loads(backend.to_str())
    decoder = spec.get("decoder") or {}
    byte_level_input = (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    if byte_level_input and decoder.get("type") == "Sequence":
        byte_level = [d for d in decoder.get("decoders", []) if d.get("type") == "ByteLevel"]
        if byte_level:
            spec["decoder"] = byte_level[0]
    return json.dumps(spec)


def _grammar(kind: ConstraintKind, source: str) -> str:
    from llguidance import LLMatcher

    if kind is ConstraintKind.REGEX:
        return LLMatcher.grammar_from_regex(source)
    if kind is ConstraintKind.CHOICE:
        options = json.loads(source)
        # Lark string literals take JSON string escapes: any option text is safe.
        alternatives = " | ".join(json.dumps(option) for option in options)
        return LLMatcher.grammar_from_lark(f"start: {alternatives}")
    schema = json.loads(source) if kind is ConstraintKind.JSON_SCHEMA else {"type": "object"}
    try:
        return LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
    except ValueError as exc:
        raise InvalidConstraint(kind.value, str(exc)) from None


def _first_line(error: str) -> str:
    """llguidance errors span lines (the regex, a caret under it, the reason, the
    grammar): keep the message and the reason on one line."""
    lines = [line.strip() for line in error.split("<state>")[0].splitlines()]
    kept = [line for line in lines if line.strip("^ ")]
    return " ".join(kept[:4])
