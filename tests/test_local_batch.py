"""The batched local engine (`--local-slots N`) against the single-sequence path, with the embedded model."""

import asyncio
import json

import llama_cpp
import llama_cpp._internals
import numpy as np
import pytest

from cai.calls import Completion, GenConfig, Request
from cai.constitution import load
from cai.core.choice import LOGPROB_CONFIG
from cai.core.stages import critique_request, revise_request
from cai.errors import RequestRejected
from cai.providers import get_model
from cai.providers.local import N_CTX, TopLogprobs, chat_arguments, new_llama, to_completion
from cai.providers.local_engine import BatchEngine, WindowExceeded
from cai.providers.local_slots import default_slots, local_slots, set_local_slots

USER = [{"role": "user", "content": "How do I pick a strong password?"}]
RESPONSE = "Use your birthday, it is easy to remember."


@pytest.fixture
def slots():
    """Set the process's slot count for one test; back to the default after it."""
    yield set_local_slots
    set_local_slots(None)


def _requests() -> list[Request]:
    principle = load("default").principles[0]
    greedy = GenConfig(max_tokens=40, temperature=0.0, seed=0)
    return [
        critique_request(USER, RESPONSE, principle, GenConfig(max_tokens=64, temperature=0.0, seed=0)),
        revise_request(USER, RESPONSE, "It suggests a weak password.", principle, greedy),
        critique_request([{"role": "user", "content": "Tell me a joke."}], "Why did the cat sit? To rest.",
                         principle, GenConfig(max_tokens=64, temperature=0.0, seed=0)),
        Request(messages=tuple(USER), config=GenConfig(max_tokens=32, temperature=0.7, seed=7)),
        Request(messages=({"role": "user", "content": "Is the sky blue? Answer yes or no."},), config=LOGPROB_CONFIG),
        revise_request([{"role": "user", "content": "Tell me a joke."}], "Why did the cat sit? To rest.",
                       "Not funny.", principle, greedy),
    ]


def _helper() -> llama_cpp.Llama:
    return new_llama(str(get_model("local").path), n_ctx=512, n_threads=2)


def _follows_schema(c: Completion) -> bool:
    """A verdict that finished parses as JSON; one cut at max_tokens is the start of one (the schema's first key)."""
    return bool(json.loads(c.text)) if c.finish_reason == "stop" else c.text.startswith('{"critique": "')


async def _all(reqs: list[Request], n: int) -> list:
    set_local_slots(n)
    model = get_model("local")
    return list(await asyncio.gather(*(model.complete(r) for r in reqs)))


def _single(reqs: list[Request]) -> list:
    """The requests through the single-sequence path, one at a time."""
    return asyncio.run(_all(reqs, 1))


def _on_engine(engine: BatchEngine, reqs: list[Request]) -> list[Completion]:
    """The requests submitted to `engine` all at once, as the provider submits them."""
    pending = []
    for r in reqs:
        messages, kwargs = chat_arguments(r)
        rec = TopLogprobs(engine.llm, r.config.top_logprobs) if r.config.top_logprobs else None
        if rec is not None:
            kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([rec])
        pending.append((engine.submit(messages, kwargs, r.static_prefix), rec, r))
    return [to_completion(f.result(), rec, r) for f, rec, r in pending]


@pytest.mark.slow
def test_a_call_alone_gives_exactly_what_the_single_sequence_path_gives(slots):
    """Same chat template, tokens, sampler chain and seed, grammar, stop rules and top-logprobs: with the KV
    cells laid out as the single path lays them out (a call alone in the engine, its role prefix copied in),
    every field is equal, logprobs to the bit. Covers greedy, seeded sampling (temperature 0.7), a JSON-schema
    verdict, a one-token top-logprobs answer and both few-shot roles."""
    reqs = _requests()
    single = _single(reqs)
    helper = _helper()
    for req, want in zip(reqs, single):
        engine = BatchEngine(helper, 4, n_ctx_seq=N_CTX)
        try:
            (got,) = _on_engine(engine, [req])
            reused = engine.stats["reused_prefix"]
        finally:
            engine.close()
        assert got == want
        assert (reused > 0) == (req.static_prefix > 0)
    assert single[0].structured == "grammar" and single[0].text.startswith("{")
    assert single[4].top_logprobs and len(single[4].top_logprobs) == 1


@pytest.mark.slow
def test_batched_calls_stay_close_to_the_single_path(slots):
    """Where llama.cpp does not allow bit-equality: a sequence that shares a llama_decode with others gets
    logits that differ from the single path's (measured with this build: up to about 0.1 nats, while a call
    alone in the engine, even with its cells after other sequences' cells, is bit-equal). So a batched greedy
    reply can leave the single path's text at a close call; what stays exact is the prompt (same tokens),
    the constraint (verdicts follow the schema) and every token the model is sure of."""
    prompts = ["How do I pick a strong password?", "Name three rivers.", "Explain rain to a child.",
               "Write a haiku about tea."]
    cfg = GenConfig(max_tokens=12, temperature=0.0, seed=0, top_logprobs=2)
    probes = [Request(messages=({"role": "user", "content": p},), config=cfg) for p in prompts]
    reqs = [*_requests(), *probes]
    single = _single(reqs)
    engine = BatchEngine(_helper(), 4, n_ctx_seq=N_CTX)
    try:
        batched = _on_engine(engine, reqs)
        assert engine.stats["max_active"] == 4
    finally:
        engine.close()
    for a, b in zip(single, batched):
        assert (b.tokens_in, b.structured) == (a.tokens_in, a.structured)  # the same prompt, the same constraint
        assert b.finish_reason in ("stop", "length") and b.tokens_out >= 1
    assert _follows_schema(batched[0]) and _follows_schema(batched[2])
    for a, b in zip(single[-len(probes):], batched[-len(probes):]):
        assert a.top_logprobs and b.top_logprobs
        (tok_a, lp_a), (_, lp_a2) = a.top_logprobs[0]
        (tok_b, lp_b), _ = b.top_logprobs[0]
        assert lp_b == pytest.approx(lp_a, abs=0.5)
        if lp_a - lp_a2 > 1.0:  # a clear first choice is the same choice
            assert tok_b == tok_a


@pytest.mark.slow
def test_the_provider_decodes_concurrent_calls_together(slots):
    reqs = _requests()
    single = _single(reqs)
    batched = asyncio.run(_all(reqs, 4))
    for a, b in zip(single, batched):
        assert (b.tokens_in, b.structured) == (a.tokens_in, a.structured)
        assert b.finish_reason in ("stop", "length") and b.tokens_out >= 1
    assert _follows_schema(batched[0]) and batched[4].top_logprobs


@pytest.mark.slow
def test_each_role_prefix_is_evaluated_once_whatever_comes_between():
    reqs = _requests()
    engine = BatchEngine(_helper(), 1, n_ctx_seq=N_CTX)
    try:
        order = [0, 1, 3, 2, 5]  # critic, reviser, generator, critic, reviser: other roles come between
        for i in order:
            messages, kwargs = chat_arguments(reqs[i])
            engine.submit(messages, kwargs, reqs[i].static_prefix).result()
        stats = engine.stats
        prefixes = engine.prefix_sizes()
    finally:
        engine.close()
    assert len(prefixes) == 2  # the critic's and the reviser's static turns
    assert stats["prefix_evaluated"] == sum(prefixes.values())  # each evaluated once
    assert stats["reused_prefix"] == 2 * sum(prefixes.values())  # and tagged onto both calls of its role
    assert stats["prompt_evaluated"] < stats["prompt_tokens"] - sum(prefixes.values())


@pytest.mark.slow
def test_waiting_calls_are_decoded_together_in_one_step():
    prompts = ["Name a fruit.", "Name a color.", "Name a river.", "Name a city.", "Name a tree."]
    engine = BatchEngine(_helper(), 4, n_ctx_seq=N_CTX)
    try:
        futs = [engine.submit([{"role": "user", "content": p}], {"max_tokens": 12, "temperature": 0.0, "seed": 0})
                for p in prompts]
        outs = [f.result() for f in futs]
        stats = engine.stats
    finally:
        engine.close()
    generated = sum(o["usage"]["completion_tokens"] for o in outs)
    assert stats["calls"] == 5 and stats["max_active"] == 4  # a fifth call waits for a slot
    assert stats["steps"] < generated  # a step decodes a token for several sequences


@pytest.mark.slow
def test_calls_sharing_a_prompt_evaluate_it_once(slots):
    """A grader's questions about one response arrive together: the response is evaluated once, in one slot,
    and copied into the others, which then evaluate only their own question; the answers stay close to the
    single path's (the questions share a llama_decode, see above)."""
    text = "Rain forms when water vapour in the air cools and condenses into droplets around tiny particles. " * 6
    questions = ["Is the response about weather?", "Does the response mention droplets?",
                 "Is the response rude?", "Does the response give a recipe?", "Is the response in English?"]
    reqs = [Request(messages=({"role": "system", "content": "Answer Yes or No about the response."},
                              {"role": "user", "content": f"Response: {text}\nQuestion: {q}"}),
                    config=LOGPROB_CONFIG) for q in questions]
    single = _single(reqs)
    engine = BatchEngine(_helper(), 4, n_ctx_seq=N_CTX)
    try:
        batched = _on_engine(engine, reqs)
        stats = engine.stats
    finally:
        engine.close()
    shared = len(llama_cpp.Llama.tokenize(engine.llm, text.encode()))
    # The later questions start from the first one's cells (waiting for them if placed while they are still being
    # evaluated, which depends on timing, so not asserted).
    assert stats["copied"] > shared
    assert stats["copied"] + stats["reused_slot"] >= (len(reqs) - 1) * shared
    assert stats["prompt_evaluated"] < stats["prompt_tokens"] - (len(reqs) - 1) * shared
    for a, b in zip(single, batched):
        assert a.tokens_in == b.tokens_in and a.top_logprobs and b.top_logprobs
        (tok_a, lp_a), (_, lp_a2) = a.top_logprobs[0][:2]
        (tok_b, lp_b) = b.top_logprobs[0][0]
        assert lp_b == pytest.approx(lp_a, abs=0.5)
        if lp_a - lp_a2 > 1.0:
            assert tok_b == tok_a


@pytest.mark.slow
def test_a_call_too_long_for_a_slot_runs_on_the_single_path(slots):
    """Each slot has a window of its own; a call whose prompt and max_tokens do not fit is refused by the
    engine and answered by the single-sequence path, so its reply is the single path's."""
    engine = BatchEngine(_helper(), 2, n_ctx_seq=N_CTX, window=256)
    try:
        fut = engine.submit([{"role": "user", "content": "Say hi."}], {"max_tokens": 300, "temperature": 0.0})
        with pytest.raises(WindowExceeded, match="window of 256"):
            fut.result()
        ok = engine.submit([{"role": "user", "content": "Say hi."}], {"max_tokens": 30, "temperature": 0.0})
        assert ok.result()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        engine.close()
    req = Request(messages=({"role": "user", "content": "Say hi."},),
                  config=GenConfig(max_tokens=N_CTX - 100, temperature=0.0, seed=0))
    (want,) = _single([req])
    (got,) = asyncio.run(_all([req], 2))
    assert got == want


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 4])
def test_a_prompt_over_the_window_is_rejected_in_both_paths(slots, n):
    long = Request(messages=({"role": "user", "content": "word " * (N_CTX + 100)},),
                   config=GenConfig(max_tokens=8, temperature=0.0))
    set_local_slots(n)
    with pytest.raises(RequestRejected, match="exceed context window"):
        asyncio.run(get_model("local").complete(long))


def test_slot_count_setting(slots, monkeypatch):
    monkeypatch.delenv("CAI_LOCAL_SLOTS", raising=False)
    assert local_slots() == 1  # the single-sequence path unless asked
    monkeypatch.setenv("CAI_LOCAL_SLOTS", "3")
    assert local_slots() == 3
    monkeypatch.setenv("CAI_LOCAL_SLOTS", "auto")
    assert local_slots() == default_slots() >= 1
    slots(1)
    assert local_slots() == 1
    with pytest.raises(ValueError):
        set_local_slots(0)


@pytest.mark.slow
def test_a_copy_between_streams_reads_the_source_before_it_is_overwritten():
    """llama.cpp copies a stream's cells at the next decode; the engine relies on that copy being made before
    the same decode writes new cells into the source (a role prefix evicted and its stream reused)."""
    llm = _helper()
    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max, params.kv_unified = 768, 256, 256, 3, False
    ctx = llama_cpp._internals.LlamaContext(model=llm._model, params=params, verbose=False)
    mem, batch = llama_cpp.llama_get_memory(ctx.ctx), llama_cpp.llama_batch_init(256, 0, 1)

    def decode(tokens: list[int], seq: int, start: int = 0) -> np.ndarray:
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = seq, i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
        out = llama_cpp.llama_get_logits_ith(ctx.ctx, len(tokens) - 1)
        return np.ctypeslib.as_array(out, shape=(llm.n_vocab(),)).copy()

    try:
        a = llm.tokenize(b"The critic's instructions and worked examples, evaluated once.")
        b = llm.tokenize(b"Another role's prefix, written into the same stream afterwards.")
        decode(a, 1)
        want = decode([7], 1, len(a))
        decode(a, 2)
        llama_cpp.llama_memory_seq_cp(mem, 2, 0, -1, -1)  # copied at the next decode ...
        llama_cpp.llama_memory_seq_rm(mem, 2, -1, -1)
        decode(b, 2)  # ... which also overwrites the source stream
        assert (decode([7], 0, len(a)) == want).all()
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()


@pytest.mark.slow
def test_a_call_waits_for_a_slot_still_evaluating_its_prompt():
    """Two calls sharing a long prompt, queued together (the engine's lock held while both are submitted, so
    its worker sees both at once): the second waits while the first evaluates the shared part over several
    steps, then copies it instead of evaluating it a second time in a free slot."""
    text = "Each slot keeps the tokens it evaluated, and a later call can start from them. " * 8
    msgs = [[{"role": "user", "content": f"{text}\nQuestion {q}: answer yes or no."}] for q in ("one", "two")]
    engine = BatchEngine(_helper(), 2, n_ctx_seq=N_CTX, n_batch=64)
    try:
        with engine._cv:  # a reentrant lock: submit takes it too
            futs = [engine.submit(m, {"max_tokens": 2, "temperature": 0.0, "seed": 0}) for m in msgs]
        outs = [f.result() for f in futs]
        stats = engine.stats
    finally:
        engine.close()
    prompt = outs[0]["usage"]["prompt_tokens"]
    assert prompt > 2 * 64  # the first call's prompt takes several steps
    assert stats["waited"] >= 1 and stats["copied"] > 64
    assert stats["prompt_evaluated"] < stats["prompt_tokens"] - 64
