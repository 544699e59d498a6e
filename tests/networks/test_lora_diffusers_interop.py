"""Our LoRA files load in diffusers' StableDiffusionPipeline.load_lora_weights with the same effect.

diffusers converts kohya-style keys itself (``_convert_non_diffusers_lora_to_diffusers``): it maps
``lora_te_text_model_…`` to ``text_model.…`` and, for transformers 5's flattened CLIPTextModel,
strips the ``text_model.`` level again before injecting PEFT layers. These tests check that every
module is injected (no missing/unexpected-key messages) and that outputs equal the hand-merged model.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from lora_helpers import merged_copy, randomize_up_weights, token_ids, unet_inputs

from library.networks.lora import create_network

pytest.importorskip("peft", reason="diffusers needs peft for load_lora_weights")

BAD_WORDS = ("unexpected", "missing", "not loaded", "not correctly renamed", "no lora keys", "error")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_into_pipeline(model_dir, lora_path) -> tuple[object, list[str]]:
    """Load the pipeline and the LoRA, returning every log/warning message emitted while loading the LoRA."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    pipe = StableDiffusionPipeline.from_pretrained(
        model_dir, safety_checker=None, requires_safety_checker=False
    )
    handler = Collect()
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
    old_level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_info()
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(lora_path))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        diffusers_logging.set_verbosity(old_level)
    return pipe, handler.messages + [str(w.message) for w in caught]


def count_lora_layers(model) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("conv_dim", [None, 3])
def test_diffusers_loads_our_file_with_the_same_effect(tiny_sd1, tiny_sd1_dir, tmp_path, conv_dim):
    unet, te = tiny_sd1["unet"], tiny_sd1["text_encoder"]
    network = create_network(unet, te, dim=4, alpha=2, conv_dim=conv_dim, conv_alpha=1.5)
    randomize_up_weights(network, std=0.1)
    path = network.save(tmp_path / "lora.safetensors", metadata={"ss_network_module": "networks.lora"})
    sd = network.state_dict()

    pipe, messages = load_into_pipeline(tiny_sd1_dir, path)
    assert "Non-diffusers checkpoint detected." in messages  # went through diffusers' kohya converter
    bad = [m for m in messages if any(w in m.lower() for w in BAD_WORDS)]
    assert bad == []
    assert count_lora_layers(pipe.unet) == len(network.unet_names) == (120 if conv_dim is None else 177)
    assert count_lora_layers(pipe.text_encoder) == len(network.text_encoder_names) == 24

    latents, t, states = unet_inputs()
    ids = token_ids()
    with torch.no_grad():
        got_unet = pipe.unet(latents, t, encoder_hidden_states=states).sample
        expected_unet = merged_copy(unet, sd, "lora_unet")(latents, t, encoder_hidden_states=states).sample
        base_unet = unet(latents, t, encoder_hidden_states=states).sample
        got_te = pipe.text_encoder(ids)[0]
        expected_te = merged_copy(te, sd, "lora_te", te=True)(ids)[0]
        base_te = te(ids)[0]
    assert (got_unet - base_unet).abs().max() > 1e-3  # the LoRA really changes the output
    assert (got_te - base_te).abs().max() > 1e-3
    torch.testing.assert_close(got_unet, expected_unet, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(got_te, expected_te, atol=5e-5, rtol=1e-4)
