"""The batched local engine: continuous batching over one llama.cpp context, with prompt prefixes kept warm.

One engine per GGUF path and process. Calls are queued; a worker thread gives each one a slot (a KV sequence
id) as one frees, and every step makes one `llama_decode` over all active slots: the next token of each
generating sequence plus a chunk of each new prompt. Finished sequences leave their slot at once.

The KV cache is unified (one pool of cells shared by all sequences), so copying a sequence with
`llama_memory_seq_cp` only tags the same cells with another sequence id. Two kinds of reuse follow:

* role prefixes: the static part of a request's prompt (`Request.static_prefix` leading messages: a role's
  instructions and worked examples) is evaluated once into a sequence of its own, kept while the process
  lives (least recently used evicted past `prefixes` entries or when cells run short), and tagged onto the
  slot of every later call that starts with it, whatever calls of other roles came between;
* a finished slot keeps its tokens until it is needed, and a new call starts from the idle slot sharing the
  longest prefix with its prompt (a grader's questions about one response), as `Llama` does for its one
  sequence.

Cells are budgeted: a call is admitted only when its prompt and `max_tokens` fit beside what is held, so
`llama_decode` never runs out of room mid-generation; idle slots and then prefixes are released to make room.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import llama_cpp._internals as internals

from cai.providers.local_gen import Generation, make_sampler, plan

MIN_PREFIX = 16  # tokens: a shorter static prefix is not worth a sequence of its own


@dataclass
class _Prefix:
    seq: int
    tokens: list[int]


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's cells hold, position by position
    shared: str | None = None  # the prefix key whose cells [0, shared_len) this slot shares
    shared_len: int = 0
    gen: Generation | None = None  # the call being generated; None when idle
    sampler: Any = None
    future: Future[dict[str, Any]] | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    last_used: int = 0


@dataclass
class _Job:
    messages: list[dict[str, str]]
    kwargs: dict[str, Any]
    static_prefix: int
    future: Future[dict[str, Any]]
    gen: Generation | None = None
    args: dict[str, Any] | None = None


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchEngine:
    """Continuous batching over `slots` sequences of one context on the model of `llm` (a `llama_cpp.Llama`,
    used for its weights, chat template, tokenizer and defaults; its own context is not used)."""

    def __init__(self, llm: Any, slots: int, *, n_ctx_seq: int, cells: int | None = None, prefixes: int = 4,
                 n_batch: int = 512, flash_attn: bool = False) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.llm, self.slots_n, self.n_ctx_seq, self.n_batch = llm, slots, n_ctx_seq, n_batch
        self.max_prefixes = prefixes
        self.cells = cells or min(16384, max(n_ctx_seq + 1024, 768 * slots + 2048))
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_batch, params.n_ubatch = self.cells, n_batch, n_batch
        params.n_seq_max, params.kv_unified = slots + prefixes, True
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._slots = [_Slot(seq=i) for i in range(slots)]
        self._free_prefix_seqs = list(range(slots, slots + prefixes))
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self._prefix_tokens: dict[str, list[int]] = {}  # key -> the static prefix's tokens, once computed
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = self._cancel = self._freed = False
        self._clock = 0
        self.stats = {"calls": 0, "steps": 0, "prompt_tokens": 0, "prompt_evaluated": 0, "prefix_evaluated": 0,
                      "reused_prefix": 0, "reused_slot": 0, "max_active": 0}
        self._thread = threading.Thread(target=self._run, name="cai-llama-batch", daemon=True)
        self._thread.start()

    # -- the calling side --------------------------------------------------------------------------------

    def submit(self, messages: list[dict[str, str]], kwargs: dict[str, Any],
               static_prefix: int = 0) -> Future[dict[str, Any]]:
        """Queue one chat completion (`create_chat_completion` keyword arguments); the future gets its reply
        dict, or the ValueError `create_chat_completion` would raise (e.g. a prompt over the window)."""
        fut: Future[dict[str, Any]] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the local engine is closed")
            self._queue.append(_Job(messages, kwargs, static_prefix, fut))
            self._cv.notify()
        return fut

    def close(self, cancel: bool = False) -> None:
        """Stop the worker and free the context: after the calls already queued, or (`cancel`, at interpreter
        exit) after the current step, leaving unfinished calls unanswered, so no decode outlives the context."""
        with self._cv:
            freed, self._freed = self._freed, True
            self._closed, self._cancel = True, self._cancel or cancel
            self._cv.notify()
        self._thread.join()
        if not freed:  # a second close (e.g. at exit after a test's) frees nothing twice
            llama_cpp.llama_batch_free(self._batch)
            with closing(self._ctx):
                pass

    def prefix_sizes(self) -> dict[str, int]:
        """{role prefix key: its tokens} for every static prefix seen so far (kept in the cache or not)."""
        return {k: len(v) for k, v in self._prefix_tokens.items()}

    # -- the worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._active():
                    if self._closed:
                        return
                    self._cv.wait()
                if self._cancel:  # at exit: whoever waits on the calls left is gone (their loop may be closed)
                    return
            try:
                self._admit()
                if self._active():
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failure of the engine itself fails the calls in it
                for s in self._active():
                    self._end(s, error=e)

    def _active(self) -> list[_Slot]:
        return [s for s in self._slots if s.gen is not None]

    def _mem(self) -> Any:
        return self._ctx.memory

    def _held(self) -> int:
        """Cells held now or promised to active calls (cells shared with a live prefix counted once)."""
        n = sum(len(p.tokens) for p in self._prefixes.values())
        for s in self._slots:
            shared = s.shared_len if s.shared in self._prefixes else 0
            n += len(s.tokens) - shared + len(s.pending)
            if s.gen is not None:
                n += s.gen.max_tokens - len(s.gen.completion)
        return n

    def _admit(self) -> None:
        while True:
            with self._cv:
                if not self._queue or all(s.gen is not None for s in self._slots):
                    return
                job = self._queue[0]
            if job.gen is None and not self._prepare(job):
                with self._cv:
                    self._queue.popleft()
                continue
            try:
                placed = self._place(job)
            except Exception as e:  # noqa: BLE001 - e.g. a prefix that could not be decoded
                placed = True
                job.future.set_exception(e)
            if not placed:
                return  # waits for cells to free up
            with self._cv:
                self._queue.popleft()

    def _prepare(self, job: _Job) -> bool:
        """Plan the call; False (its future failed) if it cannot run."""
        if not job.future.set_running_or_notify_cancel():
            return False
        try:
            job.args = plan(self.llm, job.messages, **job.kwargs)
            job.gen = Generation.from_plan(self.llm, job.args, self.n_ctx_seq)
        except Exception as e:  # noqa: BLE001 - handed to the caller as create_chat_completion would raise it
            job.future.set_exception(e)
            return False
        return True

    def _prefix_key(self, job: _Job) -> tuple[str | None, list[int]]:
        """The role prefix of the job's prompt: its key and tokens (None, [] when it has none worth keeping)."""
        assert job.gen is not None
        if job.static_prefix <= 0 or job.static_prefix >= len(job.messages):
            return None, []
        key = json.dumps(job.messages[: job.static_prefix], sort_keys=True)
        tokens = self._prefix_tokens.get(key)
        if tokens is None:
            head = plan(self.llm, job.messages[: job.static_prefix], max_tokens=1)["prompt"]
            tokens = self._prefix_tokens[key] = list(job.gen.prompt[: _lcp(list(head), job.gen.prompt)])
        prompt = job.gen.prompt
        if len(tokens) < MIN_PREFIX or len(tokens) >= len(prompt) or prompt[: len(tokens)] != tokens:
            return None, []
        return key, tokens

    def _place(self, job: _Job) -> bool:
        """Give the job a free slot, reusing a role prefix or an idle slot's tokens; False if cells are short."""
        gen = job.gen
        assert gen is not None
        key, ptokens = self._prefix_key(job)
        idle = [s for s in self._slots if s.gen is None]
        best = max(idle, key=lambda s: (min(_lcp(s.tokens, gen.prompt), len(gen.prompt) - 1), -s.last_used))
        keep = min(_lcp(best.tokens, gen.prompt), len(gen.prompt) - 1)
        use_prefix = key is not None and len(ptokens) > keep
        if not use_prefix:
            key, ptokens = None, []
        need = len(gen.prompt) + gen.max_tokens - (len(ptokens) or keep)
        if key is not None and key not in self._prefixes:
            need += len(ptokens)
        if not self._make_room(need, best, key):
            return False
        if key is not None and key not in self._prefixes and not self._new_prefix(key, ptokens):
            key, ptokens = None, []
        mem = self._mem()
        if key is not None:
            llama_cpp.llama_memory_seq_rm(mem, best.seq, -1, -1)
            llama_cpp.llama_memory_seq_cp(mem, self._prefixes[key].seq, best.seq, -1, -1)
            self._prefixes.move_to_end(key)
            best.tokens, best.shared, best.shared_len = list(ptokens), key, len(ptokens)
            self.stats["reused_prefix"] += len(ptokens)
        else:
            llama_cpp.llama_memory_seq_rm(mem, best.seq, keep, -1)
            best.tokens = best.tokens[:keep]
            best.shared_len = min(best.shared_len, keep)
            self.stats["reused_slot"] += keep
        assert job.args is not None
        best.gen, best.future = gen, job.future
        best.sampler = make_sampler(self.llm, job.args)
        best.pending = gen.prompt[len(best.tokens):]
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += len(gen.prompt)
        self.stats["max_active"] = max(self.stats["max_active"], len(self._active()))
        return True

    def _make_room(self, need: int, slot: _Slot, key: str | None) -> bool:
        """Release idle slots' tokens, then role prefixes, until `need` more cells fit; False if they cannot."""
        budget = self.cells - self.n_batch
        for s in sorted((s for s in self._slots if s.gen is None and s is not slot), key=lambda s: s.last_used):
            if self._held() + need <= budget:
                return True
            llama_cpp.llama_memory_seq_rm(self._mem(), s.seq, -1, -1)
            s.tokens, s.shared, s.shared_len = [], None, 0
        for k in [k for k in self._prefixes if k != key]:
            if self._held() + need <= budget:
                return True
            self._drop_prefix(k)
        return self._held() + need <= budget or not self._active()

    def _drop_prefix(self, key: str) -> None:
        p = self._prefixes.pop(key)
        llama_cpp.llama_memory_seq_rm(self._mem(), p.seq, -1, -1)
        self._free_prefix_seqs.append(p.seq)

    def _new_prefix(self, key: str, tokens: list[int]) -> bool:
        """Evaluate a role prefix into a sequence of its own (the least recently used one is given up)."""
        if not self._free_prefix_seqs:
            if not self._prefixes:
                return False
            self._drop_prefix(next(iter(self._prefixes)))
        seq = self._free_prefix_seqs.pop()
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            self._fill([(t, start + i, seq, False) for i, t in enumerate(chunk)])
            self._decode()
        self._prefixes[key] = _Prefix(seq, list(tokens))
        self.stats["prefix_evaluated"] += len(tokens)
        return True

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self._batch
        for i, (tok, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = len(rows)

    def _decode(self) -> None:
        rc = llama_cpp.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _step(self) -> None:
        """One llama_decode over every active slot, then one sampled token for each that asked for logits."""
        rows: list[tuple[int, int, int, bool]] = []
        outs: list[tuple[_Slot, int]] = []
        active = self._active()
        for s in active:
            if not s.pending and s.gen is not None and s.gen.completion:
                outs.append((s, len(rows)))
                rows.append((s.gen.completion[-1], len(s.tokens), s.seq, True))
                s.tokens.append(s.gen.completion[-1])
        room = self.n_batch - len(rows)
        for s in active:
            if s.pending and room > 0:
                chunk, s.pending = s.pending[:room], s.pending[room:]
                last = not s.pending
                rows.extend((t, len(s.tokens) + i, s.seq, last and i == len(chunk) - 1) for i, t in enumerate(chunk))
                if last:
                    outs.append((s, len(rows) - 1))
                s.tokens.extend(chunk)
                self.stats["prompt_evaluated"] += len(chunk)
                room -= len(chunk)
        self._fill(rows)
        try:
            self._decode()
        except RuntimeError as e:
            for s, _ in outs:
                self._end(s, error=ValueError(f"the local model could not decode: {e}"))
            return
        self.stats["steps"] += 1
        for s, i in outs:
            assert s.gen is not None
            token = llama_cpp.llama_sampler_sample(s.sampler.sampler, self._ctx.ctx, i)
            if s.gen.push(token, s.tokens):  # max_tokens is cut to the window, so the window never fills first
                self._end(s)

    def _end(self, s: _Slot, error: BaseException | None = None) -> None:
        """Hand the call its reply (or `error`) and leave the slot idle, its tokens kept for reuse."""
        gen, fut = s.gen, s.future
        if error is not None or s.pending:
            llama_cpp.llama_memory_seq_rm(self._mem(), s.seq, -1, -1)
            s.tokens, s.shared, s.shared_len = [], None, 0
        s.gen, s.future, s.pending = None, None, []
        if s.sampler is not None:
            s.sampler.close()
            s.sampler = None
        self._clock += 1
        s.last_used = self._clock
        if fut is None or gen is None:
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(gen.result())

