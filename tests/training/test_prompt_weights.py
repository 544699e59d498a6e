"""The webui's attention syntax: the parser, the per-token weights and the weighted text-encoder states."""

from __future__ import annotations

import pytest
import torch

from library.text.attention import parse_prompt_attention, plain_text
from library.text.weighting import apply_token_weights, clip_weighted_rows, sequence_weighted_rows

# (prompt, the webui's parse_prompt_attention result); the first six are the webui's own docstring examples
ATTENTION_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("", [("", 1.0)]),
    ("(tag)", [("tag", 1.1)]),
    ("((tag))", [("tag", 1.2100000000000002)]),
    ("(((tag)))", [("tag", 1.3310000000000004)]),
    ("(tag:1.3)", [("tag", 1.3)]),
    ("(tag: 1.3 )", [("tag", 1.3)]),
    ("(tag:0)", [("tag", 0.0)]),
    ("(tag:-0.5)", [("tag", -0.5)]),
    ("[tag]", [("tag", 1 / 1.1)]),
    ("[[tag]]", [("tag", 1 / 1.1 / 1.1)]),
    ("[tag", [("tag", 1 / 1.1)]),
    ("tag)", [("tag)", 1.0)]),  # a closing bracket without its opening one is text
    ("tag]", [("tag]", 1.0)]),
    ("a ((b:2) c)", [("a ", 1.0), ("b", 2.2), (" c", 1.1)]),  # nested weights multiply
    ("([b:1.5])", [("b:1.5", 1.0)]),  # (x:w) needs its ")" right after w
    ("(a)(b:1.1)", [("ab", 1.1)]),  # adjacent pieces of one weight merge
    ("\\\\ back", [("\\ back", 1.0)]),
    ("a \\(b\\) c", [("a (b) c", 1.0)]),
    ("x:y", [("x:y", 1.0)]),
    ("(x:y)", [("x:y", 1.1)]),
    ("(x:1.2.3)", [("x:1.2.3", 1.1)]),  # no number: text (the webui raises ValueError here)
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # in brackets: a weighted word, no break
    ("aBREAK b", [("aBREAK b", 1.0)]),  # BREAK only as a word of its own
    ("masterpiece, (1girl:1.2), [blurry], ((red hair))",
     [("masterpiece, ", 1.0), ("1girl", 1.2), (", ", 1.0), ("blurry", 1 / 1.1), (", ", 1.0),
      ("red hair", 1.2100000000000002)]),
]


@pytest.mark.parametrize("prompt,expected", ATTENTION_CASES)
def test_parse_prompt_attention_gives_the_webuis_weights(prompt, expected):
    assert parse_prompt_attention(prompt) == expected


def test_plain_text_drops_the_markup():
    assert plain_text("a (cat:1.3) on [grass], \\(x\\)") == "a cat on grass, (x)"
    assert plain_text("a BREAK b") == "a BREAK b"


class WordTokenizer:
    """A stand-in tokenizer: one id per whitespace-separated word (ids from 10), BOS 1, EOS 2, pad 0."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, texts, add_special_tokens=False, truncation=False):
        assert add_special_tokens is False
        rows = [[self.vocab.setdefault(w, 10 + len(self.vocab)) for w in t.split()] for t in texts]
        return type("Encoding", (), {"input_ids": rows})()


def test_clip_rows_give_each_token_its_pieces_weight():
    tok = WordTokenizer()
    ids, weights = clip_weighted_rows(tok, ["a (b c:1.5) [d]", "e"], None)
    assert ids.shape == weights.shape == (2, 77)
    a, b, c, d, e = (tok.vocab[w] for w in "abcde")
    assert ids[0, :6].tolist() == [1, a, b, c, d, 2] and ids[0, 6:].eq(0).all()
    assert weights[0, :6].tolist() == pytest.approx([1.0, 1.0, 1.5, 1.5, 1 / 1.1, 1.0])
    assert weights[0, 6:].eq(1.0).all() and weights[1].eq(1.0).all()
    assert ids[1, :3].tolist() == [1, e, 2]


def test_break_and_long_prompts_fill_75_token_chunks():
    tok = WordTokenizer()
    ids, weights = clip_weighted_rows(tok, ["a BREAK (b:2)"], 150)
    assert ids.shape == (1, 154)
    assert ids[0, :3].tolist() == [1, tok.vocab["a"], 2]  # BREAK pads the first chunk
    assert ids[0, 77:80].tolist() == [1, tok.vocab["b"], 2] and weights[0, 78].item() == 2.0
    long = " ".join(f"w{i}" for i in range(80))
    ids, _ = clip_weighted_rows(tok, [f"({long})"], 150)
    assert ids[0, 76].item() == 2 and ids[0, 77].item() == 1  # 75 tokens, EOS, then BOS of chunk 2
    assert ids[0, 78:83].tolist() == [tok.vocab[f"w{i}"] for i in range(75, 80)]
    ids, _ = clip_weighted_rows(tok, [long], None)
    assert ids.shape == (1, 77) and ids[0, 75].item() == tok.vocab["w74"]  # cut at max_token_length


def test_sequence_rows_end_with_eos_and_padding():
    tok = WordTokenizer()
    ids, weights = sequence_weighted_rows(tok, ["a (b:0.5) BREAK c"], 6)
    assert ids[0].tolist() == [tok.vocab["a"], tok.vocab["b"], tok.vocab["c"], 2, 0, 0]
    assert weights[0].tolist() == [1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    ids, _ = sequence_weighted_rows(tok, ["a b c d e f g"], 4)
    assert ids[0].tolist() == [*(tok.vocab[w] for w in "abc"), 2]


def test_apply_token_weights_multiplies_and_restores_each_windows_mean():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 154, 8, generator=gen) + 0.3
    weights = 1 + torch.rand(2, 154, generator=gen)
    out = apply_token_weights(hidden, weights, 77)
    for b in range(2):
        for start in (0, 77):
            window = slice(start, start + 77)
            scaled = hidden[b, window] * weights[b, window, None]
            expected = scaled * (hidden[b, window].mean() / scaled.mean())
            assert torch.allclose(out[b, window], expected, atol=1e-6)
            assert out[b, window].mean().item() == pytest.approx(hidden[b, window].mean().item(), abs=1e-6)
    assert torch.equal(apply_token_weights(hidden, torch.ones(2, 154), 77), hidden)
    assert apply_token_weights(hidden, None) is hidden
    with pytest.raises(ValueError, match="do not match"):
        apply_token_weights(hidden, torch.ones(2, 77))


# --- the families' weighted encoding, and weighted_captions in training -------------------------------------


def _with_biased_final_norm(text_encoder) -> None:
    """The tiny CLIP's final norm has no bias, so its states average exactly 0 (no mean to restore); a real
    CLIP's has one."""
    with torch.no_grad():
        text_encoder.final_layer_norm.bias.copy_(torch.linspace(-0.5, 1.0, text_encoder.config.hidden_size))


@pytest.fixture(scope="module")
def tiny_sd():
    from library.models.loading import load_base_model

    model = load_base_model("builtin:tiny")
    _with_biased_final_norm(model.text_encoder)
    return model


def _expected_weights(model, part: str, plain: str, weighted_words: dict[str, float], max_token_length=None):
    """Weights (1, L) of ``plain``'s tokens: ``weighted_words`` (single-token words) get theirs, the rest 1."""
    tokenizer = model.tokenizers[part]
    ids = model.tokenize_prompt([plain], max_token_length)[part]
    weights = torch.ones(ids.shape)
    for word, weight in weighted_words.items():
        (token,) = tokenizer(word, add_special_tokens=False).input_ids
        weights[ids == token] = weight
    return ids, weights


def _mean_restored(hidden, weights, window):
    b, length, dim = hidden.shape
    states = hidden.reshape(b, -1, window, dim)
    scaled = states * weights.reshape(b, -1, window, 1)
    return (scaled * states.mean(dim=(2, 3), keepdim=True) / scaled.mean(dim=(2, 3), keepdim=True)).reshape(hidden.shape)


CAPTION = "sks (disc:1.3), [red], ((picture))"
PLAIN = "sks disc, red, picture"
WORDS = {"disc": 1.3, "red": 1 / 1.1, "picture": 1.1 * 1.1}


@pytest.mark.slow
@pytest.mark.parametrize("max_token_length", [None, 150])
def test_sd_weighted_caption_is_the_plain_one_weighted_and_mean_restored(tiny_sd, max_token_length):
    model = tiny_sd
    ids, weights = _expected_weights(model, "text_encoder", PLAIN, WORDS, max_token_length)
    tokens, got_weights = model.adapter.tokenize_weighted(model, [CAPTION], max_token_length)
    assert torch.equal(tokens["text_encoder"], ids)
    assert torch.allclose(got_weights["text_encoder"], weights)
    with torch.no_grad():
        plain = model.encode_prompt([PLAIN], max_token_length=max_token_length).hidden
        weighted = model.encode_prompt([CAPTION], max_token_length=max_token_length, weighted=True).hidden
    assert torch.allclose(weighted, _mean_restored(plain, weights, 77), atol=1e-5)
    assert not torch.allclose(weighted, plain, atol=1e-3)
    disc = (ids[0] == ids[0, 2]).nonzero()[0, 0]  # "sks" is id 1, "disc" 2 after BOS
    ratio = weighted[0] / plain[0]
    assert (ratio[disc] / ratio[0]).mean().item() == pytest.approx(1.3, rel=1e-4)  # BOS keeps weight 1


@pytest.mark.slow
def test_sdxl_weights_each_encoders_states_and_keeps_the_pooled_output(tiny_sdxl_files):
    from library.models.loading import load_base_model

    model = load_base_model(str(tiny_sdxl_files["single"]))
    with torch.no_grad():
        plain = model.encode_prompt([PLAIN])
        weighted = model.encode_prompt([CAPTION], weighted=True)
    width = model.parts["text_encoder_1"].config.hidden_size
    for part, dims in (("text_encoder_1", slice(0, width)), ("text_encoder_2", slice(width, None))):
        _, weights = _expected_weights(model, part, PLAIN, WORDS)
        expected = _mean_restored(plain.hidden[..., dims], weights, 77)
        assert torch.allclose(weighted.hidden[..., dims], expected, atol=1e-5), part
    assert torch.equal(weighted.pooled, plain.pooled)


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from library.models.loading import load_base_model
    from library.models.tiny_flux import save_tiny_flux

    files = save_tiny_flux(tmp_path_factory.mktemp("flux_weights"), "dev")["files"]
    return load_base_model(str(files["transformer"]), components={k: str(files[k]) for k in ("clip_l", "t5xxl", "ae")})


@pytest.mark.slow
def test_flux_weights_t5_states_and_reads_clip_without_markup(tiny_flux):
    model = tiny_flux
    tokens, weights = model.adapter.tokenize_weighted(model, [CAPTION], None)
    (t5_part,) = weights  # only T5's states take weights; CLIP-L gives the (unweighted) pooled vector
    w = weights[t5_part]
    assert sorted({round(x, 4) for x in w[0].tolist()}) == [round(1 / 1.1, 4), 1.0, 1.21, 1.3]
    with torch.no_grad():
        same_tokens = model.adapter.encode(model, tokens, None)
        weighted = model.encode_prompt([CAPTION], weighted=True)
        plain = model.encode_prompt([PLAIN])
    # T5 tokenizes each piece on its own (", " after a piece is "▁,"), so compare with the same tokens unweighted
    assert torch.allclose(weighted.hidden, _mean_restored(same_tokens.hidden, w, w.shape[1]), atol=1e-5)
    assert not torch.allclose(weighted.hidden, same_tokens.hidden, atol=1e-4)
    assert torch.equal(weighted.pooled, plain.pooled)  # CLIP-L read "sks disc, red, picture"


@pytest.mark.slow
def test_weighted_captions_weight_the_training_steps_conditioning(tiny_sd, tmp_path, tiny_dataset):
    from library.config.load import parse_config
    from library.training.step import StepSettings, encode_captions
    from tests.training.helpers import base_options

    opts = base_options(tiny_dataset, tmp_path / "o", weighted_captions=True)
    argv = [x for k, v in opts.items() for x in ((f"--{k}",) if v is True else (f"--{k}", str(v)))]
    settings = StepSettings.from_config(parse_config(argv, "network"), tiny_sd)
    assert settings.weighted_captions
    with torch.no_grad():
        cond = encode_captions(tiny_sd, [CAPTION], settings, with_grad=False).hidden
        expected = tiny_sd.encode_prompt([CAPTION], weighted=True).hidden
        off = encode_captions(tiny_sd, [CAPTION], StepSettings(v_prediction=False), with_grad=False).hidden
    assert torch.equal(cond, expected)
    assert not torch.allclose(cond, off)  # unweighted, "(disc:1.3)" is read as text


def test_weighted_captions_refused_with_cached_text_encoder_outputs(tmp_path, tiny_dataset):
    from library.config.load import parse_config
    from library.errors import ConfigError
    from tests.training.helpers import base_options

    opts = base_options(tiny_dataset, tmp_path / "o")
    argv = [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    with pytest.raises(ConfigError, match="'weighted_captions' cannot be combined with 'cache_text_encoder_outputs'"):
        parse_config([*argv, "--weighted_captions", "--cache_text_encoder_outputs"], "network")
    assert parse_config([*argv, "--weighted_captions"], "network").weighted_captions is True
