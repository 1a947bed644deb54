"""Tokenizers and frozen random text encoders for the embedded HunyuanVideo pipeline.

The real model uses Llava-Llama-3 and CLIP-L; here both are tiny, randomly initialised and frozen,
and their tokenizers are byte-level BPEs trained on the caption grammar plus the prompt template.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from w2svd.data import caption, sample_portrait

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
PAD = "<|pad|>"


def template_prefix(template: dict[str, Any] = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The prompt template's text before the user prompt (what ``crop_start`` must cover)."""
    return template["template"].split("{}")[0]


def caption_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [caption(sample_portrait(rng, "any"), rng) for _ in range(n)]


def build_llama_tokenizer(corpus: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no BOS) in which the default template's prefix is exactly crop_start tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*LLAMA_SPECIALS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*corpus, DEFAULT_PROMPT_TEMPLATE["template"].replace("{}", "")], trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>", padding_side="right"
    )
    n = len(wrapped(template_prefix()).input_ids)
    if n != DEFAULT_PROMPT_TEMPLATE["crop_start"]:
        raise RuntimeError(
            f"template prefix is {n} tokens, expected crop_start={DEFAULT_PROMPT_TEMPLATE['crop_start']}"
        )
    return wrapped


def build_clip_tokenizer(corpus: list[str], vocab_size: int = 1024) -> CLIPTokenizer:
    """CLIP's own BPE pipeline, retrained on the caption corpus."""
    return CLIPTokenizer().train_new_from_iterator(corpus, vocab_size=vocab_size)


def build_text_encoders(
    llama_vocab: int, clip_vocab: int, clip_eos_id: int, llama_kwargs: dict, clip_kwargs: dict, seed: int
) -> tuple[LlamaModel, CLIPTextModel]:
    """Random frozen encoders; token embeddings are drawn N(0, 1) so every word is clearly distinct."""
    torch.manual_seed(seed)
    llama = LlamaModel(LlamaConfig(vocab_size=llama_vocab, **llama_kwargs))
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=clip_vocab, eos_token_id=clip_eos_id, bos_token_id=0, pad_token_id=clip_eos_id, **clip_kwargs
        )
    )
    with torch.no_grad():
        for m in (llama, clip):
            m.get_input_embeddings().weight.normal_(0.0, 1.0)
    for m in (llama, clip):
        m.requires_grad_(False).eval()
    return llama, clip
