"""The generation engine: per-request settings in one batch, token ids and log-probabilities that agree with the model."""

import torch

from model.generation import Draw, LocalEngine, Request, Sampling

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "1, 2, 3,"]


def test_a_batch_of_mixed_settings_gives_each_request_its_own(checkpoint):
    engine = LocalEngine(str(checkpoint), device="cpu", batch_size=8)
    greedy = [Sampling(max_new_tokens=12)] * 4
    alone = [engine.generate([Request(prompt=p, sampling=s)])[0][0] for p, s in zip(PROMPTS, greedy)]
    mixed_settings = [Sampling(max_new_tokens=12), Sampling(max_new_tokens=3),
                      Sampling(max_new_tokens=12, temperature=1.0, seed=7, n=3), Sampling(max_new_tokens=12, top_logprobs=2)]
    mixed = engine.generate([Request(prompt=p, sampling=s) for p, s in zip(PROMPTS, mixed_settings)])

    assert mixed[0][0].text == alone[0].text  # greedy stays greedy beside a sampled request
    assert mixed[1][0].token_ids == alone[1].token_ids[:3] and mixed[1][0].finish_reason in ("length", "stop")
    assert len(mixed[2]) == 3 and all(len(c.token_ids) <= 12 for c in mixed[2])
    assert mixed[3][0].token_ids == alone[3].token_ids and all(len(t) == 2 for t in mixed[3][0].top_logprobs)
    assert mixed[0][0].top_logprobs is None  # alternatives only where asked
    again = engine.generate([Request(prompt=PROMPTS[2], sampling=mixed_settings[2])])[0]
    assert [c.token_ids for c in again] == [c.token_ids for c in mixed[2]]  # the seed makes sampling repeatable


def test_logprobs_are_the_models_own_in_a_batch_whose_rows_end_at_different_steps(checkpoint):
    engine = LocalEngine(str(checkpoint), device="cpu")
    budgets = (8, 3, 6, 11)  # rows leave the batch at different steps (their cache rows with them)
    results = engine.generate([Request(prompt=p, sampling=Sampling(max_new_tokens=m, temperature=1.0, seed=1, logprobs=True))
                               for p, m in zip(PROMPTS, budgets)])
    for prompt, budget, [completion] in zip(PROMPTS, budgets, results):
        assert 0 < len(completion.token_ids) <= budget
        prompt_ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + completion.token_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(engine.model(input_ids=ids).logits.float(), -1)[0]
        expected = [float(logprobs[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(completion.token_ids)]
        assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(expected), atol=1e-4)
        assert engine.tokenizer.decode(completion.token_ids, skip_special_tokens=True) == completion.text


def test_a_stop_string_ends_the_text_and_its_tokens(checkpoint):
    engine = LocalEngine(str(checkpoint), device="cpu")
    [[free]] = engine.generate([Request(prompt="Hello", sampling=Sampling(max_new_tokens=16))])
    assert free.finish_reason == "length" and len(free.token_ids) == 16
    [[stopped]] = engine.generate([Request(prompt="Hello", sampling=Sampling(max_new_tokens=16, stop=("lolo",), logprobs=True))])
    assert stopped.finish_reason == "stop" and len(stopped.token_ids) < 16
    assert free.text.startswith(stopped.text) and "lolo" not in stopped.text
    assert engine.tokenizer.decode(stopped.token_ids, skip_special_tokens=True) == stopped.text
    assert len(stopped.logprobs) == len(stopped.token_ids) == len(stopped.tokens)


def test_streamed_pieces_make_the_greedy_text_and_an_error_ends_the_stream(checkpoint):
    import pytest

    engine = LocalEngine(str(checkpoint), device="cpu")
    request = Request(prompt="Hello", sampling=Sampling(max_new_tokens=10))
    [[whole]] = engine.generate([request])
    assert "".join(engine.stream(request)) == whole.text
    engine.model.generate = lambda **kw: (_ for _ in ()).throw(RuntimeError("the model broke"))
    with pytest.raises(RuntimeError, match="the model broke"):
        list(engine.stream(request))  # raised to the reader, not a hang


def test_sampling_settings_are_checked_and_stop_strings_may_be_a_list():
    import pytest

    from granite_cli.errors import BadInput

    assert Sampling(stop=["\n\n", "Q:"]).batch_key() == Sampling(stop=("\n\n", "Q:")).batch_key()
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"n": 0}):
        with pytest.raises(BadInput):
            Sampling(**bad)


def test_samples_of_one_prompt_share_its_prefill_and_draw_what_separate_prefills_draw(checkpoint, monkeypatch):
    """A request's n samples prefill the prompt once (the cache holds one row per distinct prompt, copied to each
    sample): the same tokens and log-probabilities as prefilling every sample's copy."""
    engine = LocalEngine(str(checkpoint), device="cpu", batch_size=16)
    requests = [Request(prompt=p, sampling=Sampling(max_new_tokens=10, temperature=1.0, seed=3, n=4, logprobs=True))
                for p in PROMPTS[:3]]
    prefilled = []
    original = engine.model.forward

    def counting(*args, **kwargs):
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] > 1:
            prefilled.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    shared = engine.generate(requests)
    assert prefilled == [3]  # one prefill, of the three distinct prompts (not twelve rows)

    monkeypatch.setattr(engine, "_distinct", lambda prompts: (prompts, list(range(len(prompts)))))  # every row its own
    separate = engine.generate(requests)
    assert [[c.token_ids for c in r] for r in shared] == [[c.token_ids for c in r] for r in separate]
    assert len({tuple(c.token_ids) for c in shared[0]}) > 1  # the samples differ from each other
    for r, s in zip(shared, separate):
        for a, b in zip(r, s):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_draw_samples_the_tempered_softmax_within_transformers_nucleus():
    """Drawn frequencies over 40,000 rows match softmax(logits / temperature) renormalised over the tokens that
    transformers' own top-p keeps (4 standard errors at most); a token outside the nucleus is never drawn."""
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.tensor([0.5, 2.0, -3.0, 1.0, 0.0, -1.0, 1.5])  # not in order: the nucleus path maps indices back
    rows = 40_000
    for temperature, top_p in ((0.7, 1.0), (1.3, 0.8), (1.0, 0.5)):
        scores = Draw(temperature, top_p, seed=0)(None, logits.repeat(rows, 1))
        assert torch.isfinite(scores).sum(1).eq(1).all()  # one token left to the greedy step, per row
        drawn = torch.bincount(scores.argmax(1), minlength=len(logits)).double() / rows
        kept = torch.isfinite(TopPLogitsWarper(top_p)(None, (logits / temperature)[None]))[0] if top_p < 1 else torch.ones(len(logits), dtype=torch.bool)
        expected = torch.softmax(logits / temperature, -1).double() * kept
        expected /= expected.sum()
        assert drawn[~kept].sum() == 0
        assert ((drawn - expected).abs() <= 4 * (expected * (1 - expected) / rows).sqrt() + 1e-12).all(), (drawn, expected)
    again = Draw(1.0, 1.0, seed=5)
    assert torch.equal(again(None, logits.repeat(64, 1)), Draw(1.0, 1.0, seed=5)(None, logits.repeat(64, 1)))
    assert not torch.equal(again(None, logits.repeat(64, 1)), Draw(1.0, 1.0, seed=5)(None, logits.repeat(64, 1)))  # a new draw each step


def test_sampling_leaves_torchs_global_generator_alone(checkpoint):
    engine = LocalEngine(str(checkpoint), device="cpu")
    before = torch.get_rng_state()
    engine.generate([Request(prompt=PROMPTS[0], sampling=Sampling(max_new_tokens=6, temperature=1.0, seed=2, n=3))])
    assert torch.equal(torch.get_rng_state(), before)


def test_loglikelihoods_are_the_models_own_without_its_whole_vocabulary_logits(checkpoint):
    """eval's log-likelihood scoring projects only the continuations' positions onto the vocabulary, a chunk at a time:
    the sums and greedy flags of a padded batch equal each pair's from the model's own full logits, for any chunk size,
    and the model's head is never run over a batch."""
    import pytest

    from granite_cli.errors import BadInput

    engine = LocalEngine(str(checkpoint), device="cpu", batch_size=3)
    [[greedy]] = engine.generate([Request(prompt=PROMPTS[0], sampling=Sampling(max_new_tokens=4))])
    pairs = [(PROMPTS[0], greedy.text), *((p, " and so on, and so forth") for p in PROMPTS[1:]), (PROMPTS[3], " 4")]

    def alone(context, continuation):
        ctx = engine.tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = engine.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(engine.model(input_ids=torch.tensor([ctx + cont])).logits.float(), -1)[0]
        scores = logprobs[len(ctx) - 1:len(ctx) + len(cont) - 1]
        targets = torch.tensor(cont)
        return float(scores.gather(1, targets[:, None]).sum()), bool((scores.argmax(-1) == targets).all())

    expected = [alone(*pair) for pair in pairs]
    assert expected[0][1] and not all(flag for _, flag in expected)  # the greedy continuation is recognised as such
    scorer = engine._token_scorer()
    engine.model.lm_head.forward = lambda hidden: pytest.fail("the model's head ran over a whole batch")
    for chunk_tokens in (scorer.chunk_tokens, 5):
        scorer.chunk_tokens = chunk_tokens
        got = engine.loglikelihood(pairs)
        assert [flag for _, flag in got] == [flag for _, flag in expected]
        assert torch.allclose(torch.tensor([s for s, _ in got]), torch.tensor([s for s, _ in expected]), atol=1e-4)

    halved = LocalEngine(str(checkpoint), device="cpu")  # a head that scales its logits (as Cohere's does) is refused
    weight = halved.model.lm_head.weight
    halved.model.lm_head.forward = lambda hidden: torch.nn.functional.linear(hidden, weight) * 0.5
    with pytest.raises(BadInput, match="logits_scaling"):
        halved.loglikelihood(pairs)
