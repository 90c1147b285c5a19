"""An HF `tokenizers` Tokenizer built from a GGUF file's own tokenizer metadata
(tokenizer.ggml.tokens, merges, token_type): the oracle of the engine's GGUF tokenizer, and the
tokenizer the benchmarks cut SmolLM2 text with.

Only the gpt2 model with the `smollm` pre-tokenizer is built (the default model's), in the
layout of SmolLM2's own tokenizer.json: Digits(individual) then ByteLevel; control tokens
(type 3) special. bos/eos come from the file (special_ids), not from transformers' GGUF
conversion, which misreads this file's eos.
"""
from __future__ import annotations

from gguf import GGUFReader

CONTROL = 3


def field(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def hf_tokenizer(reader: GGUFReader | str):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    reader = GGUFReader(str(reader)) if not isinstance(reader, GGUFReader) else reader
    if field(reader, "tokenizer.ggml.model") != "gpt2" or field(reader, "tokenizer.ggml.pre") != "smollm":
        raise ValueError("only gpt2 tokenizers with the smollm pre-tokenizer are built here")
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    assert all(len(m) == 2 for m in merges) and len(set(tokens)) == len(tokens)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == CONTROL])
    return tok
