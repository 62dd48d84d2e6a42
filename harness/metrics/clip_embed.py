"""CLIP embeddings shared by clip_score, clip_image_similarity and clip_directional.

Embeddings are unit-normalised float32 vectors. They are cached on disk per
(model ident, content): image embeddings under the SHA-256 of the image file's
bytes, text embeddings under the SHA-256 of the UTF-8 text. So re-scoring a run,
or scoring it with a second metric on the same model, encodes nothing twice.

Prompts longer than the model's context are truncated explicitly: the BPE tokens
are counted first, and the tokenizer keeps the start token, the first
`context_length - 2` tokens and the end token. The caller gets the count and a
`truncated` flag for the score's detail.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.images import fit_cover, to_rgb
from harness.metrics.base import Metric, MetricUnavailable, Option, cache_dir, chunks, parse_positive_int
from harness.metrics.clip_models import (BUILTIN_LOADERS, TINY, ClipLoadError, ClipModel, absolute_weights, check_names,
                                         load_clip)

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"

# The options every CLIP-based metric takes; model and pretrained enter the metric id.
CLIP_OPTIONS: dict[str, Option] = {
    "model": Option(DEFAULT_MODEL, "open_clip architecture (ViT-L-14, ViT-H-14, ...), or a built-in "
                    "model's own CLIP: toy (trained on the toy world, the demo's) or tiny (random weights, for "
                    "tests)"),
    "pretrained": Option(DEFAULT_PRETRAINED, "open_clip pretrained tag, a weights file, or a folder with "
                         "open_clip_config.json; model=toy and model=tiny take their own (the default)"),
    "device": Option("auto", "torch device: auto, cpu, cuda, cuda:1 ...", in_id=False),
    "batch_size": Option(32, "images or prompts encoded per forward pass", parse=parse_positive_int, in_id=False),
    "cache": Option("default", "embedding cache: default ($HARNESS_CACHE/embeddings.sqlite), a .sqlite path, "
                    "or none", parse=lambda v: v, in_id=False),
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """A small SQLite store of embeddings keyed by (model ident, kind, content SHA-256).

    `hits` and `misses` count look-ups since this object was made.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, kind TEXT NOT NULL, "
                         "digest TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, kind, digest))")
        self._db.commit()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model: str, kind: str, digests: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(digests))
        with self._lock:
            for part in chunks(unique, 500):
                marks = ",".join("?" * len(part))
                rows = self._db.execute(f"SELECT digest, vector FROM embeddings WHERE model=? AND kind=? "
                                        f"AND digest IN ({marks})", (model, kind, *part)).fetchall()
                found.update((digest, np.frombuffer(blob, dtype=np.float32).copy()) for digest, blob in rows)
            self.hits += sum(1 for d in digests if d in found)
            self.misses += sum(1 for d in digests if d not in found)
        return found

    def put(self, model: str, kind: str, vectors: dict[str, np.ndarray]) -> None:
        rows = [(model, kind, digest, np.asarray(vec, dtype=np.float32).tobytes()) for digest, vec in vectors.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        self._db.close()


_DEFAULT_CACHES: dict[Path, EmbeddingCache] = {}


def open_cache(spec: Any) -> EmbeddingCache | None:
    """The `cache` option: an EmbeddingCache, 'default', a path, or 'none'."""
    if isinstance(spec, EmbeddingCache) or spec is None:
        return spec
    text = str(spec)
    if text.lower() in ("none", "off", "false", ""):
        return None
    path = cache_dir() / "embeddings.sqlite" if text == "default" else Path(text).expanduser()
    path = path.resolve()
    if path not in _DEFAULT_CACHES:
        try:
            _DEFAULT_CACHES[path] = EmbeddingCache(path)
        except (OSError, sqlite3.Error) as exc:
            where = "cache=default ($HARNESS_CACHE or ~/.cache/harness)" if text == "default" else f"cache={text}"
            raise MetricUnavailable(f"{where}: cannot open the embedding cache {path} ({type(exc).__name__}: "
                                    f"{exc}); give cache= a writable .sqlite path, or cache=none") from None
    return _DEFAULT_CACHES[path]


@dataclass(frozen=True)
class TextEmbedding:
    vector: np.ndarray
    tokens: int      # BPE tokens of the text
    truncated: bool  # tokens > limit: the model saw only the first `limit`
    limit: int       # BPE tokens the model reads (its context length less the start and end tokens)


class ClipEmbedder:
    """Embeds image files and prompts with one CLIP model, through the cache."""

    def __init__(self, model: str, pretrained: str, device: str = "auto", batch_size: int = 32,
                 cache: Any = "default") -> None:
        self.model_name = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = batch_size
        self._cache_spec = cache
        self.refresh = False  # True: embeddings computed anew and written over the cached ones (a rescore)
        self._cache: EmbeddingCache | None = None
        self._clip: ClipModel | None = None

    @property
    def cache(self) -> EmbeddingCache | None:
        """The embedding cache, opened on first use (making a metric touches no file)."""
        if self._cache is None and self._cache_spec is not None:
            self._cache = open_cache(self._cache_spec)
            if self._cache is None:
                self._cache_spec = None  # 'none': no cache
        return self._cache

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "ClipEmbedder":
        return cls(options["model"], options["pretrained"], options["device"], options["batch_size"], options["cache"])

    @property
    def clip(self) -> ClipModel:
        """The loaded model; MetricUnavailable (every item NaN) when it cannot load."""
        if self._clip is None:
            try:
                self._clip = load_clip(self.model_name, self.pretrained, self.device)
            except ClipLoadError as exc:
                raise MetricUnavailable(f"CLIP model failed to load: {exc}") from exc
        return self._clip

    # -- images ----------------------------------------------------------------
    def images(self, paths: Sequence[Path | str],
               fit: Sequence[tuple[int, int] | None] | None = None) -> list[np.ndarray | str]:
        """Per path: its unit embedding, or a reason string when the file cannot be read. `fit` gives,
        per path, a (width, height) to prepare the image to first as the pipeline prepares an init
        image (EXIF rotation, cover, centre crop: :func:`harness.images.load_init_image`), or None."""
        self.clip  # fail early (MetricUnavailable) before reading any file
        paths = list(paths)
        fit = list(fit) if fit is not None else [None] * len(paths)
        results: list[np.ndarray | str] = []
        for start in range(0, len(paths), self.batch_size):  # bounded memory: one batch of files at a time
            end = start + self.batch_size
            results.extend(self._images_batch(paths[start:end], fit[start:end]))
        return results

    def _images_batch(self, paths: Sequence[Path | str],
                      fit: Sequence[tuple[int, int] | None]) -> list[np.ndarray | str]:
        from PIL import Image, ImageOps

        results: list[np.ndarray | str | None] = [None] * len(paths)
        digests: list[str | None] = [None] * len(paths)
        raw: dict[int, bytes] = {}
        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                results[i] = f"image unreadable: {path}: {type(exc).__name__}: {exc}"
                continue
            digests[i] = sha256_bytes(data) if fit[i] is None else sha256_text(
                f"{sha256_bytes(data)} fitted to {fit[i][0]}x{fit[i][1]}")
            raw[i] = data
        known = self._cached("image", [d for d in digests if d is not None])
        todo: list[tuple[int, Any]] = []
        for i, digest in enumerate(digests):
            if digest is None:
                continue
            if digest in known:
                results[i] = known[digest]
                continue
            try:
                with Image.open(io.BytesIO(raw[i])) as image:
                    image.load()
                    if fit[i] is None:
                        todo.append((i, to_rgb(image)))
                    else:
                        todo.append((i, fit_cover(to_rgb(ImageOps.exif_transpose(image)), *fit[i])))
            except Exception as exc:  # any decoder failure (PIL raises many types) is a per-item reason
                results[i] = f"image unreadable: {paths[i]}: {type(exc).__name__}: {exc}"
        fresh: dict[str, np.ndarray] = {}
        if todo:
            vectors = self._encode_images([image for _, image in todo])
            for (i, _), vec in zip(todo, vectors):
                results[i] = vec
                fresh[digests[i]] = vec  # type: ignore[index]
        self._store("image", fresh)
        return results  # type: ignore[return-value]

    def _encode_images(self, images: list) -> np.ndarray:
        import torch

        clip = self.clip
        batch = torch.stack([clip.preprocess(image) for image in images]).to(clip.device)
        with torch.inference_mode():
            features = clip.model.encode_image(batch).float()
        return _unit(features.cpu().numpy())

    # -- texts -----------------------------------------------------------------
    def texts(self, texts: Sequence[str]) -> list[TextEmbedding]:
        clip = self.clip
        limit = clip.context_length - 2  # room for the start and end tokens
        counts = {text: clip.count_tokens(text) for text in dict.fromkeys(texts)}
        digests = {text: sha256_text(text) for text in counts}
        known = self._cached("text", [digests[t] for t in texts])
        todo = [t for t in counts if digests[t] not in known]
        fresh: dict[str, np.ndarray] = {}
        for part in chunks(todo, self.batch_size):
            for text, vec in zip(part, self._encode_texts(list(part))):
                fresh[digests[text]] = vec
        self._store("text", fresh)
        vectors = {**known, **fresh}
        return [TextEmbedding(vectors[digests[t]], counts[t], counts[t] > limit, limit) for t in texts]

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        clip = self.clip
        # The tokenizer truncates to context_length (start token, first context_length-2 BPE tokens, end token);
        # texts() has already counted the tokens so the truncation is reported, never silent.
        tokens = clip.tokenizer(texts, context_length=clip.context_length).to(clip.device)
        with torch.inference_mode():
            features = clip.model.encode_text(tokens).float()
        return _unit(features.cpu().numpy())

    # -- cache -----------------------------------------------------------------
    def _cached(self, kind: str, digests: list[str]) -> dict[str, np.ndarray]:
        if self.cache is None or not digests or self.refresh:
            return {}
        return self.cache.get(self.clip.ident, kind, digests)

    def _store(self, kind: str, vectors: dict[str, np.ndarray]) -> None:
        if self.cache is not None and vectors:
            self.cache.put(self.clip.ident, kind, vectors)


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors, computed in float64; NaN when either is (near) zero."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na < 1e-8 or nb < 1e-8:
        return float("nan")
    return float(a64 @ b64 / (na * nb))


class ClipMetric(Metric):
    """Base of the CLIP metrics: builds the shared embedder from the CLIP options."""

    def __init__(self, **options: Any) -> None:
        if str(options.get("pretrained", "x")).strip() == "":  # `pretrained=` left empty: the default, same id
            del options["pretrained"]
        if options.get("model") in (TINY, *BUILTIN_LOADERS) and "pretrained" not in options:
            options["pretrained"] = options["model"]
        if isinstance(options.get("pretrained"), str):  # weights on disk: by absolute path, in the id too
            options["pretrained"] = absolute_weights(options["pretrained"])
        super().__init__(**options)
        self.embedder = ClipEmbedder.from_options(self.options)

    def recompute(self) -> None:
        self.embedder.refresh = True

    def check(self) -> None:
        """A misspelt architecture, a weights path that is not there, a device torch cannot parse: errors
        before anything is generated or scored, not NaN after (see `clip_models.check_names`)."""
        try:
            check_names(self.options["model"], self.options["pretrained"], self.options["device"])
        except ClipLoadError as exc:
            raise ValueError(f"metric {self.INFO.name!r}: {exc}") from None
