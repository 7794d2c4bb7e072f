"""The batched local engine: continuous batching over one llama.cpp context, with prompt prefixes kept warm.

One engine per GGUF path and process. Calls are queued; a worker thread gives each one a slot (a KV sequence
id) as one frees, and every step makes one `llama_decode` over all active slots: the next token of each
generating sequence plus a chunk of each new prompt. Finished sequences leave their slot at once.

Every sequence has a KV stream of its own (`kv_unified` off) of `window` cells, so a token attends only to
its own sequence's cells: in one shared pool every token of a step would attend to every sequence's cells,
which on a CPU costs more than the batching gains once prompts are a few hundred tokens long. A call whose
prompt and `max_tokens` do not fit in a window is refused with `WindowExceeded` (the provider then runs it
on the single-sequence path). Reuse copies cells between streams (`llama_memory_seq_cp`):

* role prefixes: the static part of a request's prompt (`Request.static_prefix` leading messages: a role's
  instructions and worked examples) is evaluated once into a stream of its own, kept while the process
  lives (least recently used given up past `prefixes` of them), and copied into the slot of every later call
  that starts with it, whatever calls of other roles came between;
* shared prompts: a call starts from whichever slot (idle or still generating) already holds the longest
  prefix of its prompt, as `Llama` does for its one sequence; a call whose prompt another slot is still
  evaluating waits for it (a grader's questions about one response then evaluate the response once).
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

MIN_PREFIX = 16  # tokens: a shorter shared prefix is not worth a copy or a wait
CELL_BUDGET = 12800  # KV cells of all streams together (23 KB each for the shipped model: about 295 MB)
MIN_WINDOW = 1024


class WindowExceeded(ValueError):
    """The call's prompt plus `max_tokens` is longer than one slot's window."""


def default_window(slots: int, prefixes: int) -> int:
    """Cells per stream: the cell budget shared out, at least MIN_WINDOW, a multiple of 256 (llama.cpp pads it so)."""
    return max(MIN_WINDOW, CELL_BUDGET // (slots + prefixes) // 256 * 256)


@dataclass
class _Prefix:
    seq: int
    tokens: list[int]


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's cells hold, position by position
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
    used for its weights, chat template, tokenizer and defaults; its own context is not used). `n_ctx_seq` is
    the window whose rules a call follows (`max_tokens` cut to it, longer prompts refused), as in the single
    path; `window` the cells each stream holds."""

    def __init__(self, llm: Any, slots: int, *, n_ctx_seq: int, window: int | None = None, prefixes: int = 2,
                 n_batch: int = 512) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.llm, self.slots_n, self.n_ctx_seq, self.n_batch = llm, slots, n_ctx_seq, n_batch
        self.window = min(window or default_window(slots, prefixes), n_ctx_seq)
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max, params.kv_unified = slots + prefixes, False
        params.n_ctx, params.n_batch, params.n_ubatch = self.window * (slots + prefixes), n_batch, n_batch
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as in the single path
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
                      "reused_prefix": 0, "reused_slot": 0, "copied": 0, "waited": 0, "max_active": 0,
                      "too_long": 0}
        self._thread = threading.Thread(target=self._run, name="cai-llama-batch", daemon=True)
        self._thread.start()

    # -- the calling side --------------------------------------------------------------------------------

    def submit(self, messages: list[dict[str, str]], kwargs: dict[str, Any],
               static_prefix: int = 0) -> Future[dict[str, Any]]:
        """Queue one chat completion (`create_chat_completion` keyword arguments); the future gets its reply
        dict, or the ValueError `create_chat_completion` would raise (e.g. a prompt over the window), or
        WindowExceeded."""
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

    def _admit(self) -> None:
        """Place queued jobs, in order, on free slots; a job whose prompt a slot is still evaluating waits."""
        with self._cv:
            jobs = list(self._queue)
        placed: list[_Job] = []
        for job in jobs:
            if all(s.gen is not None for s in self._slots):
                break
            if job.gen is None and not self._prepare(job):
                placed.append(job)
                continue
            try:
                if not self._place(job):
                    continue
            except Exception as e:  # noqa: BLE001 - e.g. a prefix that could not be decoded
                job.future.set_exception(e)
            placed.append(job)
        if placed:
            with self._cv:
                for job in placed:
                    self._queue.remove(job)

    def _prepare(self, job: _Job) -> bool:
        """Plan the call; False (its future failed) if it cannot run here."""
        if not job.future.set_running_or_notify_cancel():
            return False
        try:
            job.args = plan(self.llm, job.messages, **job.kwargs)
            job.gen = Generation.from_plan(self.llm, job.args, self.n_ctx_seq)
            if len(job.gen.prompt) + job.gen.max_tokens > self.window:
                self.stats["too_long"] += 1
                raise WindowExceeded(f"{len(job.gen.prompt)} prompt tokens + max_tokens {job.gen.max_tokens} "
                                     f"exceed a slot's window of {self.window}")
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
        """Give the job a free slot, starting from the cells that hold the longest prefix of its prompt;
        False if it should wait for a slot that is still evaluating a longer one."""
        gen = job.gen
        assert gen is not None and job.args is not None
        prompt, cap = gen.prompt, len(gen.prompt) - 1  # the last prompt token is always fed, for its logits

        have = {s.seq: min(_lcp(s.tokens, prompt), cap) for s in self._slots}  # evaluated cells it could reuse
        best = max(have.values())
        # a slot still evaluating holds its whole prompt once done (its tokens plus its pending ones)
        if any(min(_lcp(s.gen.prompt, prompt), cap) >= best + MIN_PREFIX
               for s in self._active() if s.pending and s.gen is not None):
            self.stats["waited"] += 1
            return False
        slot = max((s for s in self._slots if s.gen is None), key=lambda s: (have[s.seq], -s.last_used))
        source = max(self._slots, key=lambda s: (have[s.seq], s is slot))
        keep = have[source.seq]
        key, ptokens = self._prefix_key(job)
        mem = self._mem()
        if key is not None and len(ptokens) > keep:
            if key not in self._prefixes:
                self._new_prefix(key, ptokens)
            self._prefixes.move_to_end(key)
            self._copy(self._prefixes[key].seq, slot, len(ptokens), ptokens)
            self.stats["reused_prefix"] += len(ptokens)
        elif source is slot or keep < MIN_PREFIX:
            keep = keep if source is slot else 0
            llama_cpp.llama_memory_seq_rm(mem, slot.seq, keep, -1)
            slot.tokens = slot.tokens[:keep]
            self.stats["reused_slot"] += keep
        else:
            self._copy(source.seq, slot, keep, source.tokens[:keep])
            self.stats["copied"] += keep
        slot.gen, slot.future = gen, job.future
        slot.sampler = make_sampler(self.llm, job.args)
        slot.pending = prompt[len(slot.tokens):]
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += len(prompt)
        self.stats["max_active"] = max(self.stats["max_active"], len(self._active()))
        return True

    def _copy(self, src: int, slot: _Slot, keep: int, tokens: list[int]) -> None:
        """Make `slot`'s stream hold positions [0, keep) of stream `src` (llama.cpp copies whole streams)."""
        mem = self._mem()
        llama_cpp.llama_memory_seq_rm(mem, slot.seq, -1, -1)
        llama_cpp.llama_memory_seq_cp(mem, src, slot.seq, -1, -1)
        llama_cpp.llama_memory_seq_rm(mem, slot.seq, keep, -1)
        slot.tokens = list(tokens[:keep])

    def _new_prefix(self, key: str, tokens: list[int]) -> None:
        """Evaluate a role prefix into a stream of its own (the least recently used one is given up)."""
        if not self._free_prefix_seqs:
            old = self._prefixes.pop(next(iter(self._prefixes)))
            llama_cpp.llama_memory_seq_rm(self._mem(), old.seq, -1, -1)
            self._free_prefix_seqs.append(old.seq)
        seq = self._free_prefix_seqs.pop()
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            self._fill([(t, start + i, seq, False) for i, t in enumerate(chunk)])
            self._decode()
        self._prefixes[key] = _Prefix(seq, list(tokens))
        self.stats["prefix_evaluated"] += len(tokens)

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
            if s.gen.push(token, s.tokens):  # prompt + max_tokens fit the window, so it never fills first
                self._end(s)

    def _end(self, s: _Slot, error: BaseException | None = None) -> None:
        """Hand the call its reply (or `error`) and leave the slot idle, its tokens kept for reuse."""
        gen, fut = s.gen, s.future
        if error is not None or s.pending:
            llama_cpp.llama_memory_seq_rm(self._mem(), s.seq, -1, -1)
            s.tokens = []
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
