"""Tokenizer oracle fixtures: tokenizer.json files trained here with HF `tokenizers` in the
layouts Adaptd supports, a corpus of over 1 MB of varied text, and HF's ids and decodes of it.

write_oracle(out) writes out/<name>/tokenizer.json for each layout, and
  out/oracle.json  {"docs": [text, ...], "synthetic": [doc index, ...],
                    "tokenizers": [{"name", "path", "decoded": {"doc index": HF decode where it
                                    differs from the doc}}]}
  out/<name>/plain.bin   HF ids of every doc with special-token strings as plain text (where
                         HF's NFC is not the standard's, of the standard NFC of the doc instead)
  out/<name>/parsed.bin  HF ids of the synthetic docs (which carry look-alikes), specials parsed
The .bin files hold, per doc, a little-endian uint32 count and that many int32 ids.
"""
import json
import pathlib
import random
import re
import struct
import sysconfig
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_REGEX = QWEN_REGEX.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

SCRIPTS = [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3), (0x0410, 0x044F),
           (0x0391, 0x03C9), (0x0621, 0x064A), (0x05D0, 0x05EA), (0x0905, 0x0939), (0x0E01, 0x0E30)]
EMOJI = ["😀", "👍🏽", "👩\u200d👩\u200d👧\u200d👦", "🇩🇪", "🏳️\u200d🌈", "❤️", "🧑🏿\u200d💻", "👨\u200d🚀", "🫠"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "z\u0336\u0335a\u0334", "\u1100\u1161\u11a8", "o\u0328\u0304",
             "\u212b", "\ufb01", "\u0958"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", "   \n  ", "\u00a0", "\u3000", "\u2028", " \t ", "\u0085"]
LOOKALIKES = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|begin_of_text|>",
              "<|start_header_id|>", "<s>", "</s>", "<unk>", "<|im_start", "im_end|>", "<| im_start |>",
              " <tool> ", "<tool>", " kernel ", "kernels", "<0xE2>", "<|im_start|>user\n"]
CONTRACTIONS = ["it's", "IT'S", "we'll", "WE'LL", "they're", "I'd", "don't", "'Ve", "'\u017f", "o'clock"]
WORDS = ("the kernel memory page process thread lock queue buffer device driver file system user "
         "session token model weight update learn chunk layer the of and to in is that for").split()


def stdlib_docs(budget: int) -> list[str]:
    """Python standard library sources (code, comments, docstrings) in pieces of ~3 KB."""
    docs, total = [], 0
    for f in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        for i in range(0, len(text), 3000):
            docs.append(text[i:i + 3000])
            total += len(docs[-1].encode())
            if total >= budget:
                return docs
    return docs


def synthetic_doc(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(150, 400)):
        kind = rng.random()
        if kind < 0.30:
            parts.append(rng.choice(WORDS) + rng.choice(["", " ", " ", ", ", ". "]))
        elif kind < 0.50:
            lo, hi = rng.choice(SCRIPTS)
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
        elif kind < 0.58:
            parts.append(rng.choice(EMOJI))
        elif kind < 0.64:
            parts.append(rng.choice(COMBINING))
        elif kind < 0.78:
            parts.append(rng.choice(SPACES))
        elif kind < 0.86:
            parts.append(str(rng.randrange(10 ** rng.randint(1, 12))))
        elif kind < 0.93:
            parts.append(rng.choice(LOOKALIKES))
        else:
            parts.append(rng.choice(CONTRACTIONS))
    return "".join(parts)


def code_point_docs(rng: random.Random) -> list[str]:
    """Every assigned code point of the Unicode version Python ships (ICU and Oniguruma may
    classify later additions differently), excluding surrogates and the supplementary private-use
    planes, in runs of 48 with letters, digits and spaces between them."""
    cps = [cp for cp in range(0xF0000) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    docs = []
    for i in range(0, len(cps), 48):
        docs.append("".join(chr(cp) + rng.choice(["", "", "", "a", " ", "1", "\n", "'s"]) for cp in cps[i:i + 48]))
    return docs


def corpus() -> tuple[list[str], list[int]]:
    """The docs and the indices of the synthetic ones (which carry special-token look-alikes)."""
    rng = random.Random(7)
    docs = stdlib_docs(450_000)
    synthetic = list(range(len(docs), len(docs) + 600))
    docs += [synthetic_doc(rng) for _ in synthetic]
    docs += code_point_docs(rng)
    return docs, synthetic


def train(tok: Tokenizer, docs: list[str], vocab: int, special: list[str], **kw) -> Tokenizer:
    """Trains on `docs` without the special tokens' strings: merges learned from them would let
    HF turn plain text into special ids (Adaptd never does; tokenizer_encode_test shows it)."""
    def plain(d: str) -> str:
        for s in special:
            d = d.replace(s, "")
        return d
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, show_progress=False, **kw)
    tok.train_from_iterator([plain(d) for d in docs], trainer)
    return tok


def byte_level(regex: str | None, normalizer, vocab: int, special: list[str], docs: list[str], **model_kw) -> Tokenizer:
    tok = Tokenizer(models.BPE(**model_kw))
    tok.normalizer = normalizer
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return train(tok, docs, vocab, special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def sentencepiece(docs: list[str]) -> Tokenizer:
    """Metaspace pieces, BPE with byte fallback for the characters left out of a small alphabet."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok = train(tok, docs, 4000, ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)], limit_alphabet=300)
    j = json.loads(tok.to_str())  # the byte tokens are vocabulary, not added tokens, as in Llama-2
    j["added_tokens"] = [a for a in j["added_tokens"] if not a["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(j))


def llama2_layout(spm: Tokenizer) -> Tokenizer:
    """The same vocabulary in the layout HF's Llama-2 conversion writes (Prepend + Replace
    normalizer, no pre-tokenizer), without byte fallback, so unknown characters fuse into <unk>;
    decoded by Metaspace."""
    j = json.loads(spm.to_str())
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    j["pre_tokenizer"] = None
    j["model"].update(byte_fallback=False, fuse_unk=True)
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    return Tokenizer.from_str(json.dumps(j))


def digits_grouped(docs: list[str]) -> Tokenizer:
    """SmolLM2's layout (a Digits pre-tokenizer before a regex ByteLevel) with runs of digits
    kept whole, so that BPE learns merges of digits."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok = train(tok, docs, 4000, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    digit_merges = [m for m in json.loads(tok.to_str())["model"]["merges"] if re.fullmatch("[0-9]+", "".join(m))]
    assert len(digit_merges) >= 50, f"only {len(digit_merges)} merges join digits"
    return tok


def digits_individual(grouped: Tokenizer) -> Tokenizer:
    """The same vocabulary and merges with every digit a piece of its own, as SmolLM2 splits
    them: the merges of digits are there but can never apply."""
    j = json.loads(grouped.to_str())
    j["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = True
    return Tokenizer.from_str(json.dumps(j))


def layouts(train_docs: list[str]) -> dict[str, Tokenizer]:
    qwen = byte_level(QWEN_REGEX, normalizers.NFC(), 8000, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], train_docs)
    llama3 = byte_level(LLAMA3_REGEX, None, 16000, ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                                    "<|end_header_id|>"], train_docs, ignore_merges=True)
    llama3.add_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, special=False, normalized=False),
                       AddedToken("kernel", single_word=True, special=False, normalized=True)])
    gpt2 = byte_level(None, None, 1000, ["<|endoftext|>"], train_docs)
    spm = sentencepiece(train_docs)
    digits = digits_grouped(train_docs)
    return {"qwen": qwen, "llama3": llama3, "gpt2": gpt2, "spm": spm, "llama2": llama2_layout(spm),
            "digits_grouped": digits, "digits_individual": digits_individual(digits)}


def standard_nfc(tok: Tokenizer, doc: str) -> str:
    """`doc`, or its NFC by the Unicode standard where HF's NFC differs: HF's normalization
    tables leave some combining marks of recent Unicode versions in non-canonical order
    (e.g. U+0898 U+0899), which Adaptd, following ICU, reorders."""
    if tok.normalizer is None or not isinstance(tok.normalizer, normalizers.NFC):
        return doc
    std = unicodedata.normalize("NFC", doc)
    return std if tok.normalizer.normalize_str(doc) != std else doc


def write_ids(path: pathlib.Path, seqs: list[list[int]]) -> None:
    with path.open("wb") as f:
        for ids in seqs:
            f.write(struct.pack(f"<I{len(ids)}i", len(ids), *ids))


def write_oracle(out: pathlib.Path) -> None:
    docs, synthetic = corpus()
    train_docs = random.Random(3).sample(docs, len(docs) // 2)
    entries = []
    for name, tok in layouts(train_docs).items():
        path = out / name / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
        tok.encode_special_tokens = True
        plain = [tok.encode(standard_nfc(tok, d), add_special_tokens=False).ids for d in docs]
        write_ids(out / name / "plain.bin", plain)
        tok.encode_special_tokens = False
        write_ids(out / name / "parsed.bin", [tok.encode(docs[i], add_special_tokens=False).ids for i in synthetic])
        decoded = {}
        for i, ids in enumerate(plain):
            text = tok.decode(ids, skip_special_tokens=False)
            if text != docs[i]:
                decoded[str(i)] = text
        entries.append({"name": name, "path": str(path), "decoded": decoded})
    (out / "oracle.json").write_text(json.dumps({"docs": docs, "synthetic": synthetic, "tokenizers": entries}))


# Append-only templates in Jinja for transformers.apply_chat_template: Qwen3's ChatML without
# its stripping of earlier <think> blocks, and Llama-3's without the date-injecting system turn.
QWEN3_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a kernel expert."},
     {"role": "user", "content": "What does the page allocator do?"},
     {"role": "assistant", "content": "It hands out pages.\n\nMostly in powers of two."},
     {"role": "user", "content": "  And the slab allocator?  \n"}],
    [{"role": "user", "content": "日本語で答えて: 中文呢？한국어도 👩\u200d👩\u200d👧 e\u0301"},
     {"role": "assistant", "content": "<think>\nplan\n</think>\n\nはい。"},
     {"role": "user", "content": "\t\ttabs, 12345 digits, it's WE'LL\r\n\n\n"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": " "}, {"role": "user", "content": "\u3000x\u00a0"}],
]


def write_chat_cases(out: pathlib.Path, tokenizers: dict[str, pathlib.Path]) -> None:
    """out/cases.json: {"cases": [{"tokenizer", "format", "detected", "enable_thinking", "messages", "ids"}]},
    ids by transformers.apply_chat_template with the templates above (generation prompt on)."""
    from transformers import PreTrainedTokenizerFast
    cases = []
    for fmt, path in tokenizers.items():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|begin_of_text|>" if fmt == "llama3" else None)
        template = QWEN3_TEMPLATE if fmt == "qwen3" else LLAMA3_TEMPLATE
        for messages in CONVERSATIONS:
            for thinking in ([True, False] if fmt == "qwen3" else [True]):
                ids = tok.apply_chat_template(messages, chat_template=template, tokenize=True, add_generation_prompt=True,
                                              enable_thinking=thinking)
                # What DetectChatFormat must say: ChatML without <think> tokens is plain chatml.
                detected = "chatml" if fmt == "qwen3" and "<think>" not in tok.get_vocab() else fmt
                cases.append({"tokenizer": str(path), "format": fmt, "detected": detected, "enable_thinking": thinking,
                              "messages": messages, "ids": list(ids)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.json").write_text(json.dumps({"cases": cases}))


if __name__ == "__main__":
    import sys
    write_oracle(pathlib.Path(sys.argv[1]))
