"""Tiny random models of each transformers backend's architecture, with word-level tokenizers and
processors written here (no download), saved with ``save_pretrained``; the tests load them through the
backends' real loading code. Their captions are random words of ``WORDS``."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "a picture of red blue green disc the with photo on white cat dog sitting grass sky tree woman man "
    "standing smiling hat dress blonde hair outdoors indoors"
).split()

_CHAT = (
    "{% for m in messages %}{{ start }}{{ m['role'] }}{{ sep }}{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ image }}{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ end }}{% endfor %}"
    "{% if add_generation_prompt %}{{ start }}assistant{{ sep }}{% endif %}"
)


def _chat_template(start: str, sep: str, end: str, image: str, prefix: str = "") -> str:
    text = _CHAT
    for name, value in (("start", start), ("sep", sep), ("end", end), ("image", image)):
        text = text.replace("{{ " + name + " }}", value.replace("\n", "\\n").join(("{{ '", "' }}")))
    return prefix + text


def tiny_tokenizer(specials: list[str], **kwargs):
    """A word-level fast tokenizer: ``<pad>``, ``<unk>``, ``specials`` (as special tokens) and ``WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in ["<pad>", "<unk>", *specials, *WORDS]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", **kwargs
    )
    tokenizer.add_tokens(list(specials), special_tokens=True)
    return tokenizer


def _words_only(folder: Path, tokenizer) -> None:
    """Let the random model generate words only (no end token, no special token), so captions are never empty."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config["suppress_tokens"] = [i for t, i in tokenizer.get_vocab().items() if t not in WORDS]
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _set_processor_class(folder: Path, name: str) -> None:
    path = folder / "processor_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["processor_class"] = name
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def build_tiny_florence2(folder: Path) -> Path:
    """Florence-2: a 4-stage DaViT (64x64 pictures -> 5 image tokens) and a 1-layer BART."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    specials = ["<s>", "</s>", "<image>"]
    tok = tiny_tokenizer(
        specials, bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"}
    )
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False)
    image_processor.image_seq_length = 5
    text = dict(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=0,
        decoder_start_token_id=ids["</s>"],
        forced_eos_token_id=None,
    )
    vision = dict(
        depths=[1, 1, 1, 1],
        embed_dim=[8, 16, 16, 32],
        num_heads=[1, 1, 1, 2],
        num_groups=[1, 1, 1, 2],
        window_size=2,
        projection_dim=32,
        drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(
        Florence2Config(text_config=text, vision_config=vision, image_token_id=ids["<image>"])
    )
    model.save_pretrained(folder)
    Florence2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    _words_only(folder, tok)
    return folder


def build_tiny_llava(folder: Path) -> Path:
    """JoyCaption's architecture: LLaVA with a 2-layer SigLIP (32x32 pictures, 16 image tokens) and a 1-layer
    Llama, a Llama-3 style chat template."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessor

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<image>"]
    tok = tiny_tokenizer(specials, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    template = _chat_template(
        "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", "<image>", "{{ bos_token }}"
    )
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="full",
        chat_template=template,
        image_token="<image>",
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=ids["<|eot_id|>"],
            pad_token_id=0,
        ),
        image_token_index=ids["<image>"],
        image_seq_length=16,
        vision_feature_select_strategy="full",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    _words_only(folder, tok)
    return folder


_QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|endoftext|>",
]


def _qwen_parts(patch_size: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = tiny_tokenizer(_QWEN_SPECIALS, eos_token="<|im_end|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in _QWEN_SPECIALS}
    side = 2 * patch_size  # one merged token per 2x2 patches
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=side * side,
        max_pixels=4 * side * side,
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    template = _chat_template(
        "<|im_start|>", "\n", "<|im_end|>\n", "<|vision_start|><|image_pad|><|vision_end|>"
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=0,
    )
    return tok, image_processor, template, tokens, text


def build_tiny_qwen2_5_vl(folder: Path) -> Path:
    """Qwen2.5-VL: a 1-block vision tower (14-pixel patches, windowed attention) and a 1-layer Qwen2."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from library.tools.dataset.vlm.hf import image_only

    tok, image_processor, template, tokens, text = _qwen_parts(14)
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 10000.0}
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        out_hidden_size=32,
        fullatt_block_indexes=[0],
    )
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    image_only(Qwen2_5_VLProcessor)(image_processor, tok, chat_template=template).save_pretrained(folder)
    _set_processor_class(folder, "Qwen2_5_VLProcessor")
    _words_only(folder, tok)
    return folder


def build_tiny_qwen3_vl(folder: Path) -> Path:
    """Qwen3-VL: a 2-block vision tower (16-pixel patches, one deepstack layer) and a 1-layer Qwen3."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    from library.tools.dataset.vlm.hf import image_only

    tok, image_processor, template, tokens, text = _qwen_parts(16)
    text.update(
        head_dim=16,
        rope_parameters={
            "rope_type": "default",
            "mrope_section": [2, 2, 4],
            "mrope_interleaved": True,
            "rope_theta": 10000.0,
        },
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=32,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0],
    )
    torch.manual_seed(0)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    Qwen3VLForConditionalGeneration(config).save_pretrained(folder)
    image_only(Qwen3VLProcessor)(image_processor, tok, chat_template=template).save_pretrained(folder)
    _set_processor_class(folder, "Qwen3VLProcessor")
    _words_only(folder, tok)
    return folder


#: backend name -> builder of its tiny model
TINY_BUILDERS = {
    "florence2": build_tiny_florence2,
    "joycaption": build_tiny_llava,
    "qwen2.5-vl": build_tiny_qwen2_5_vl,
    "qwen3-vl": build_tiny_qwen3_vl,
}
