"""Text features: a class prompt -> token embeddings [L=10, d].

Two featurizers with one interface (``featurizer(prompt) -> float32 [L, d]``, ``.describe()``):

* `HashedTextFeaturizer` (default): needs no download and no extra package. Each word gets a
  fixed pseudo-random vector derived from a hash of (seed, word); a share of the sentence mean
  is added to every token (a stand-in for BERT's contextual mixing) plus a small positional
  signal, so the same word at another position or in another prompt is similar but not equal.
* `BertTextFeaturizer`: the paper's frozen ``bert-base-uncased`` (docs/method.md §2.3 steps 2-4), read
  from a folder already on disk through ``transformers`` with ``local_files_only=True``; it never
  downloads.

Prompts depend only on the class, so callers compute one table [C, L, d] per data set
(`prompt_table`) instead of featurizing per clip as the authors' collate does. Per-clip captions
become [N, L, d] plus a real-token mask (`caption_tokens`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

MAX_TOKENS = 10
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class HashedTextFeaturizer:
    """Deterministic offline word-hash embeddings, positionally varied, zero-padded to ``max_tokens``."""

    def __init__(self, dim: int = 768, max_tokens: int = MAX_TOKENS, seed: int = 0,
                 context_weight: float = 0.5, position_weight: float = 0.3):
        if dim <= 0 or max_tokens <= 0:
            raise ValueError(f"dim and max_tokens must be positive, got dim={dim}, max_tokens={max_tokens}")
        self.dim, self.max_tokens, self.seed = dim, max_tokens, seed
        self.context_weight, self.position_weight = context_weight, position_weight
        position = np.arange(max_tokens)[:, None]
        frequency = np.exp(-np.log(10000.0) * (np.arange(0, dim, 2) / dim))
        table = np.zeros((max_tokens, dim))
        table[:, 0::2] = np.sin(position * frequency)
        table[:, 1::2] = np.cos(position * frequency)[:, : dim // 2]
        self._positions = table

    @staticmethod
    def tokenize(prompt: str) -> list[str]:
        return _WORD.findall(prompt.lower())

    def word_vector(self, word: str) -> np.ndarray:
        # blake2b, not hash(): Python's str hash is salted per process.
        digest = hashlib.blake2b(f"{self.seed}\x00{word}".encode(), digest_size=8).digest()
        return np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(self.dim)

    def __call__(self, prompt: str) -> np.ndarray:
        words = self.tokenize(prompt)[: self.max_tokens]
        out = np.zeros((self.max_tokens, self.dim), dtype=np.float32)
        if not words:
            return out
        vectors = np.stack([self.word_vector(w) for w in words])
        context = vectors.mean(axis=0, keepdims=True)
        tokens = vectors + self.context_weight * context + self.position_weight * self._positions[: len(words)]
        out[: len(words)] = tokens.astype(np.float32)
        return out

    def describe(self) -> dict:
        return {"kind": "hashed", "dim": self.dim, "max_tokens": self.max_tokens, "seed": self.seed,
                "context_weight": self.context_weight, "position_weight": self.position_weight}


class BertTextFeaturizer:
    """Frozen BERT from a local folder (docs/method.md §2.3): tokenize with special tokens, take
    ``last_hidden_state``, drop [CLS]/[SEP], optionally keep only ids in ``keep_token_ids`` (the
    authors' ``cnt_new.pkl`` vocabulary, converted to JSON) and id != 0, first ``max_tokens``
    kept, zero-padded.
    """

    def __init__(self, model_dir, max_tokens: int = MAX_TOKENS, keep_token_ids=None, device: str = "cpu"):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir}: no BERT model here (expected a folder with config.json, tokenizer and weights, "
                "e.g. a saved bert-base-uncased); models are never downloaded at run time"
            )
        try:
            from transformers import AutoModel, AutoTokenizer  # an optional dependency
        except ImportError:
            raise RuntimeError(
                "the 'bert' text featurizer needs the optional package 'transformers' "
                "(pip install transformers); or use the default offline featurizer (--text-featurizer hashed)"
            ) from None

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval().to(device)
        self.model_dir, self.max_tokens, self.device = model_dir, max_tokens, device
        self.keep_token_ids = None if keep_token_ids is None else {int(i) for i in keep_token_ids}
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, prompt: str) -> np.ndarray:
        import torch

        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=True).to(self.device)
        with torch.no_grad():
            hidden = self.model(**encoded).last_hidden_state[0, 1:-1].double().cpu().numpy()
        ids = encoded["input_ids"][0, 1:-1].cpu().tolist()
        keep = [i for i, tok in enumerate(ids)
                if tok != 0 and (self.keep_token_ids is None or tok in self.keep_token_ids)]
        keep = keep[: self.max_tokens]
        out = np.zeros((self.max_tokens, self.dim), dtype=np.float32)
        out[: len(keep)] = hidden[keep]
        return out

    def describe(self) -> dict:
        return {"kind": "bert", "model_dir": str(self.model_dir), "max_tokens": self.max_tokens,
                "dim": self.dim, "token_filter": self.keep_token_ids is not None}


def make_text_featurizer(kind: str = "hashed", dim: int = 768, max_tokens: int = MAX_TOKENS, seed: int = 0,
                         bert_path=None, keep_token_ids_json=None):
    """Build a featurizer by name ("hashed" or "bert"); ``keep_token_ids_json`` is a JSON list or
    object whose keys are the BERT token ids to keep (the authors' ``cnt_new.pkl`` converted once)."""
    if kind == "hashed":
        return HashedTextFeaturizer(dim=dim, max_tokens=max_tokens, seed=seed)
    if kind == "bert":
        if bert_path is None:
            raise ValueError("the 'bert' text featurizer needs the folder of a saved model (--bert-path)")
        keep = None
        if keep_token_ids_json is not None:
            keep = json.loads(Path(keep_token_ids_json).read_text(encoding="utf-8"))
            keep = list(keep.keys()) if isinstance(keep, dict) else list(keep)
        return BertTextFeaturizer(bert_path, max_tokens=max_tokens, keep_token_ids=keep)
    raise ValueError(f"unknown text featurizer {kind!r}; expected 'hashed' or 'bert'")


def prompt_table(prompts: list[str], featurizer) -> np.ndarray:
    """Token embeddings of every prompt, stacked: float32 [C, L, d]."""
    return np.stack([featurizer(p) for p in prompts]).astype(np.float32, copy=False)


def caption_tokens(captions: list[str], featurizer) -> tuple[np.ndarray, np.ndarray]:
    """Token embeddings of each clip's caption, float32 [N, L, d], and the real-token mask, bool [N, L].

    Both featurizers zero-pad after the real tokens and never emit an all-zero real token, so the mask
    is the rows that are not all zero. Each distinct caption is featurized once.
    """
    distinct = {}
    for caption in captions:
        if caption not in distinct:
            distinct[caption] = len(distinct)
    if not distinct:
        length, dim = featurizer.max_tokens, featurizer.dim
        return np.zeros((0, length, dim), np.float32), np.zeros((0, length), bool)
    table = prompt_table(list(distinct), featurizer)
    tokens = table[np.array([distinct[c] for c in captions], dtype=np.int64)]
    return tokens, np.abs(tokens).sum(axis=-1) > 0
