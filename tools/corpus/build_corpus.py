"""Builds the project's reproducible English corpus and its tokenizer from Debian packages.

Sources (installed by scripts/setup.sh; licences in the model card):
  python3.11-doc  /usr/share/doc/python3.11/html/_sources/**/*.rst.txt   (PSF licence)
  linux-doc-6.1   /usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz  (GPL-2.0)
Each reStructuredText file is one document, cleaned to plain text. A document is held out when
sha256 of its source-relative path, read as an integer, is 0 mod 25: a rule fixed here, never
chosen by looking at results. The tokenizer is trained on the training documents only.

Output (--out, default data/corpus):
  train.jsonl, heldout.jsonl   {"source", "path", "text"} per document
  tokenizer.json               byte-level BPE, Qwen-style pre-tokenizer, NFC
  train.bin, heldout.bin       uint16 token ids, every document followed by <|endoftext|>
  heldout.idx.json             [start, length] of each held-out document in heldout.bin
  manifest.json                counts, sizes and the sha256 of every output
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pathlib
import re

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SOURCES = (
    ("python3.11-doc", pathlib.Path("/usr/share/doc/python3.11/html/_sources"), "*.rst.txt"),
    ("linux-doc-6.1", pathlib.Path("/usr/share/doc/linux-doc-6.1/Documentation"), "*.rst.gz"),
)
HELDOUT_MODULUS = 25
MIN_DOC_CHARS = 1000
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The Qwen2/Qwen3 pre-tokenization regex (contractions, letters, single digits, punctuation,
# newlines, whitespace not followed by a non-space).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_DIRECTIVE = re.compile(r"^\.\. [\w:-]+::.*$|^\.\. _[^:]*:.*$|^\.\. \|.*$|^\.\. SPDX.*$")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:+-]+:`(?:[^`<]*<)?([^`>]*)>?`")
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^`>]*>)?`_+")
_FIELD = re.compile(r"^:[\w -]+:\s*")


def clean_rst(text: str) -> str:
    """reStructuredText to plain text: drops directives, comments and heading rules, unwraps roles."""
    out, in_comment = [], False
    for line in text.replace("\r\n", "\n").split("\n"):
        if in_comment:
            if line.strip() and not line.startswith((" ", "\t")):
                in_comment = False
            else:
                continue
        if line.rstrip() == "..":
            in_comment = True
            continue
        if _DIRECTIVE.match(line) or _UNDERLINE.match(line):
            continue
        line = _ROLE.sub(r"\1", line)
        line = _LITERAL.sub(r"\1", line)
        line = _LINK.sub(r"\1", line)
        line = _FIELD.sub("", line)
        out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def is_heldout(rel_path: str) -> bool:
    return int(hashlib.sha256(rel_path.encode()).hexdigest(), 16) % HELDOUT_MODULUS == 0


def read_documents() -> list[dict]:
    docs = []
    for name, root, pattern in SOURCES:
        if not root.is_dir():
            raise SystemExit(f"missing {root}: install the Debian package {name} (scripts/setup.sh)")
        for path in sorted(root.rglob(pattern)):
            raw = gzip.open(path, "rt", errors="replace").read() if path.suffix == ".gz" \
                else path.read_text(errors="replace")
            text = clean_rst(raw)
            if len(text) >= MIN_DOC_CHARS:
                docs.append({"source": name, "path": f"{name}/{path.relative_to(root)}", "text": text})
    return docs


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def encode_docs(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    eot = tok.token_to_id("<|endoftext|>")
    ids, index, pos = [], [], 0
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        doc = enc.ids + [eot]
        index.append([pos, len(doc)])
        ids.extend(doc)
        pos += len(doc)
    return np.asarray(ids, dtype=np.uint16), index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/corpus")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = read_documents()
    split = {"train": [d for d in docs if not is_heldout(d["path"])],
             "heldout": [d for d in docs if is_heldout(d["path"])]}
    for name, items in split.items():
        with open(out / f"{name}.jsonl", "w") as f:
            for d in items:
                f.write(json.dumps(d) + "\n")
    tok = train_tokenizer([d["text"] for d in split["train"]])
    tok.save(str(out / "tokenizer.json"))
    manifest = {"heldout_rule": f"sha256(path) % {HELDOUT_MODULUS} == 0", "vocab_size": tok.get_vocab_size()}
    for name, items in split.items():
        ids, index = encode_docs(tok, [d["text"] for d in items])
        ids.tofile(out / f"{name}.bin")
        if name == "heldout":
            (out / "heldout.idx.json").write_text(json.dumps(index))
        manifest[name] = {"documents": len(items), "chars": sum(len(d["text"]) for d in items),
                          "tokens": int(ids.size)}
    manifest["sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                          for p in sorted(out.iterdir()) if p.name != "manifest.json"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, indent=1))


if __name__ == "__main__":
    main()
