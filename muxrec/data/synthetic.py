"""A seeded synthetic CTR dataset with a documented, recoverable ground truth.

The click logit is a sum of planted effects (see `SyntheticTruth`):

* main effects of a few categorical fields and a numeric price;
* one **pairwise** interaction table over (region, ad_type) and one **third-order** table over
  (device, daypart, slot). Both tables are centred along every axis, so they contain *no* main
  effect at all: a linear model cannot see them, interaction models can;
* a **topic match** between the candidate item and the user's preferred topics, which the user's
  behaviour history (mostly items of those topics) reveals to target-attention models such as DIN;
* pure-noise fields that a feature ranking should place last.

A second task, conversion, can only happen after a click (for ESMM-style models). Items carry short
titles made of topic words, so a text tower can recover the item topic.

Items also have a latent **style** s ~ N(0, 1) that only their pixels show: the click logit gains
`style_effect * s` (0 by default), and with `image_dir` set every item gets a 64x64 PNG (see
`draw_item_images`) whose shape and hue tell its topic and whose texture tells its style, and each row an
`image` column with its item's file path. A vision tower can learn both from the pixels, also for items
it never saw, where an item-id embedding has nothing. Style and images come from their own random
streams, so with the defaults every other column is what it was before they existed.

Rows are made in chunks of `chunk_rows` (CHUNK_ROWS by default; the rows depend on it): the "world"
(entities and planted effects) comes from the seed alone, and chunk c from the seed and c, so any chunk
can be made in any process (Ray Data makes them in parallel, see muxrec.pipelines.sources) and the rows
never depend on how chunks are grouped into blocks. Everything is vectorised, so millions of users and
items are cheap.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from muxrec.errors import DataError

TOPIC_WORDS = (
    ("galaxy", "orbit", "rocket", "nebula", "comet", "lunar"),
    ("pasta", "garlic", "basil", "oven", "recipe", "spice"),
    ("goal", "striker", "league", "match", "keeper", "derby"),
    ("guitar", "chorus", "album", "drummer", "melody", "tour"),
    ("stock", "bond", "market", "yield", "dividend", "broker"),
    ("trail", "summit", "tent", "canyon", "hike", "glacier"),
    ("pixel", "console", "quest", "level", "arcade", "boss"),
    ("garden", "tulip", "soil", "compost", "seed", "bloom"),
)
FILLER_WORDS = ("the", "new", "best", "guide", "daily", "top", "great", "story")
TAGS = tuple(f"tag{i:02d}" for i in range(20))


CHUNK_ROWS = 50_000
_MAX_CHUNKS = 1_000_000  # chunk streams [seed, c] must stay apart from the style / image streams below


@dataclass(frozen=True)
class SyntheticConfig:
    rows: int = 20_000
    seed: int = 0
    users: int = 800
    items: int = 400
    preferred_topics: int = 2  # per user
    history_len: tuple[int, int] = (5, 20)  # min, max items in a user's history
    pair_scale: float = 1.6  # std of the pairwise interaction table
    triple_scale: float = 1.6  # std of the third-order interaction table
    # Logit bonus when the item's topic is one the user prefers. At 1.4 the effect was worth 0.025 oracle AUC and
    # was swamped by the other signals (DIN gained 0.005 from histories); at 2.5 DIN clearly learns it.
    topic_match: float = 2.5
    base_logit: float = -1.3
    style_effect: float = 0.0  # click logit per unit of the item's latent style, which only its image shows
    image_dir: str | None = None  # absolute; when set, item images are written there and rows get `image`
    # The share of clearly styled items (|s| > 0.5) whose title names the style ("vivid" / "muted"): noisy text
    # supervision, from which an image-text model (ALIGN) can learn to see style in pixels. 0: titles never do.
    style_words: float = 0.0
    # Rows per chunk, the unit of work of a Ray task; smaller chunks spread a small set over more tasks.
    chunk_rows: int = CHUNK_ROWS

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")
        if self.chunk_rows < 1 or -(-self.rows // self.chunk_rows) > _MAX_CHUNKS:
            raise ValueError(f"chunk_rows must be >= 1 and make at most {_MAX_CHUNKS:,} chunks, got {self.chunk_rows}")
        if isinstance(self.style_effect, bool) or not isinstance(self.style_effect, (int, float)) \
                or not math.isfinite(self.style_effect):
            raise ValueError(f"style_effect must be a finite number, got {self.style_effect!r}")
        if not 0.0 <= self.style_words <= 1.0:
            raise ValueError(f"style_words must be in [0, 1], got {self.style_words!r}")
        if self.image_dir is not None and not (isinstance(self.image_dir, str) and os.path.isabs(self.image_dir)):
            raise ValueError(f"image_dir must be an absolute path, a str (workers may run in another folder), "
                             f"got {self.image_dir!r}")
        if not 1 <= self.preferred_topics <= len(TOPIC_WORDS):
            raise ValueError(f"preferred_topics must be in 1..{len(TOPIC_WORDS)}")
        lo, hi = self.history_len
        if not 0 < lo <= hi:
            raise ValueError(f"history_len must be 0 < min <= max, got {self.history_len}")


@dataclass(frozen=True)
class SyntheticTruth:
    """What was planted, for tests and feature-ranking checks."""

    informative: tuple[str, ...]
    noise: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    triples: tuple[tuple[str, str, str], ...]
    cardinality: dict[str, int] = field(default_factory=dict)
    click_rate: float = 0.0
    conversion_rate: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


CARDINALITY = {"region": 20, "ad_type": 10, "device": 4, "daypart": 6, "slot": 5, "site": 50,
               "noise_a": 30, "noise_b": 100}
IMAGE_SIZE = 64
# One shape per topic of TOPIC_WORDS, and one hue (topic / 8 of the colour wheel).
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "star", "band")
# Random streams [seed, _STYLE_STREAM] and [seed, _IMAGE_STREAM, block], apart from chunk c's [seed, c] (c < 10**6
# up to 5e10 rows): style and images never shift the draws of the other columns.
_STYLE_STREAM = 1_000_003
_IMAGE_STREAM = 1_000_004
_STYLE_WORDS_STREAM = 1_000_005
STYLE_WORDS = ("vivid", "muted")  # for s > 0.5 and s < -0.5
_RENDER_BLOCK = 256  # items drawn together; each block has its own stream, so any item can be drawn alone
_RENDER_VERSION = 1  # bump when the drawing changes: folders of older images are then refused, not mixed
_IMAGES_MARKER = ".synthetic-images.json"
_WORDS = pa.array([w for words in TOPIC_WORDS for w in words] + list(FILLER_WORDS), pa.string())
_TOPIC_SIZE = len(TOPIC_WORDS[0])


def _cdf(k: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** a
    return np.cumsum(p / p.sum())


def _zipf(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _centred(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """A random table with zero mean along every axis: a pure interaction, no main effects."""
    t = rng.normal(0.0, 1.0, size=shape)
    for axis in range(len(shape)):
        t = t - t.mean(axis=axis, keepdims=True)
    return t * (scale / t.std())


def _first_k(rng: np.random.Generator, n: int, choices: int, k: int) -> np.ndarray:
    """(n, k): k distinct values of range(choices) per row, in random order."""
    return np.argsort(rng.random((n, choices), dtype=np.float32), axis=1)[:, :k]


def _lists(flat: pa.Array, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


@dataclass(frozen=True)
class _World:
    """Entities and planted effects: everything that is shared by all rows."""

    item_topic: np.ndarray  # (items,)
    item_style: np.ndarray  # (items,) latent style s ~ N(0, 1), shown by the item image only
    title_words: np.ndarray  # (items, 4) indices into _WORDS, -1 = none
    user_pref: np.ndarray  # (users, preferred_topics)
    history_offsets: np.ndarray  # (users + 1,) into history_items
    history_items: np.ndarray  # (sum of history lengths,)
    user_cdf: np.ndarray
    item_cdf: np.ndarray
    column_cdf: dict[str, np.ndarray]
    site_effect: np.ndarray
    ad_type_effect: np.ndarray
    tag_effect: np.ndarray
    pair: np.ndarray
    triple: np.ndarray


@lru_cache(maxsize=2)  # one world per process and config: every chunk a Ray worker makes reuses it
def _world(cfg: SyntheticConfig) -> _World:
    rng = np.random.default_rng(cfg.seed)
    topics = len(TOPIC_WORDS)
    item_topic = rng.integers(0, topics, size=cfg.items)
    # Titles: 2-3 distinct words of the item's topic with one filler word inserted somewhere.
    picked = item_topic[:, None] * _TOPIC_SIZE + _first_k(rng, cfg.items, _TOPIC_SIZE, 3)  # (items, 3)
    n_words = rng.integers(2, 4, size=cfg.items)
    filler = topics * _TOPIC_SIZE + rng.integers(0, len(FILLER_WORDS), size=cfg.items)
    at = (rng.random(cfg.items) * (n_words + 1)).astype(np.int64)  # filler position, 0..n_words
    slot = np.arange(4)[None, :]
    src = np.where(slot < at[:, None], slot, slot - 1)  # (items, 4) position in `picked`
    title_words = np.where(slot == at[:, None], filler[:, None],
                           np.take_along_axis(picked, np.clip(src, 0, 2), axis=1))
    title_words = np.where(slot <= n_words[:, None], title_words, -1)

    user_pref = _first_k(rng, cfg.users, topics, cfg.preferred_topics)  # (users, P)
    lengths = rng.integers(cfg.history_len[0], cfg.history_len[1] + 1, size=cfg.users)
    owner = np.repeat(np.arange(cfg.users), lengths)
    topic = user_pref[owner, rng.integers(0, cfg.preferred_topics, size=len(owner))]
    by_topic = np.argsort(item_topic, kind="stable")
    starts = np.searchsorted(item_topic[by_topic], np.arange(topics + 1))
    count = np.diff(starts)[topic]
    liked = by_topic[np.minimum(starts[topic] + (rng.random(len(owner)) * count).astype(np.int64), cfg.items - 1)]
    from_pref = (rng.random(len(owner)) < 0.85) & (count > 0)
    history_items = np.where(from_pref, liked, rng.integers(0, cfg.items, size=len(owner)))

    return _World(
        item_topic=item_topic, item_style=np.random.default_rng([cfg.seed, _STYLE_STREAM]).normal(size=cfg.items),
        title_words=title_words, user_pref=user_pref,
        history_offsets=np.concatenate([[0], np.cumsum(lengths)]), history_items=history_items,
        user_cdf=_cdf(cfg.users, 0.8), item_cdf=_cdf(cfg.items, 0.9),
        column_cdf={name: _cdf(k, 0.6) for name, k in CARDINALITY.items()},
        site_effect=rng.normal(0.0, 0.5, size=CARDINALITY["site"]),
        ad_type_effect=rng.normal(0.0, 0.4, size=CARDINALITY["ad_type"]),
        tag_effect=rng.normal(0.0, 0.3, size=len(TAGS)),
        pair=_centred(rng, (CARDINALITY["region"], CARDINALITY["ad_type"]), cfg.pair_scale),
        triple=_centred(rng, (CARDINALITY["device"], CARDINALITY["daypart"], CARDINALITY["slot"]), cfg.triple_scale),
    )


def num_chunks(cfg: SyntheticConfig) -> int:
    return -(-cfg.rows // cfg.chunk_rows)


def generate_chunk(cfg: SyntheticConfig, chunk: int) -> pa.Table:
    """Rows chunk * chunk_rows ... of the dataset, the same in every process."""
    w = _world(cfg)
    start = chunk * cfg.chunk_rows
    n = min(cfg.chunk_rows, cfg.rows - start)
    if not 0 <= chunk < num_chunks(cfg):
        raise ValueError(f"chunk {chunk} is outside 0..{num_chunks(cfg) - 1}")
    rng = np.random.default_rng([cfg.seed, chunk])

    user = _zipf(rng, w.user_cdf, n)
    item = _zipf(rng, w.item_cdf, n)
    cols = {name: _zipf(rng, w.column_cdf[name], n) for name in CARDINALITY}
    n_tags = rng.integers(1, 4, size=n)
    tag_ids = _first_k(rng, n, len(TAGS), 3)  # (n, 3), the first n_tags of each row are used
    tag_used = np.arange(3)[None, :] < n_tags[:, None]
    price = rng.lognormal(mean=3.0, sigma=0.6, size=n)
    score = rng.normal(0.0, 1.0, size=n)
    noise_num = rng.normal(0.0, 1.0, size=n)

    match = (w.user_pref[user] == w.item_topic[item][:, None]).any(axis=1)
    log_price = (np.log(price) - 3.0) / 0.6
    logit = (cfg.base_logit
             + w.site_effect[cols["site"]] + w.ad_type_effect[cols["ad_type"]]
             + (w.tag_effect[tag_ids] * tag_used).sum(axis=1)
             + 0.5 * score - 0.3 * log_price
             + w.pair[cols["region"], cols["ad_type"]]
             + w.triple[cols["device"], cols["daypart"], cols["slot"]]
             + np.where(match, cfg.topic_match, -cfg.topic_match / 3)
             + cfg.style_effect * w.item_style[item])
    ctr = 1.0 / (1.0 + np.exp(-logit))
    click = rng.random(n) < ctr
    cvr_logit = -0.8 - 0.9 * log_price + 0.6 * (cols["device"] == 0)
    conversion = click & (rng.random(n) < 1.0 / (1.0 + np.exp(-cvr_logit)))

    words = w.title_words[item]  # (n, 4)
    title = pc.binary_join(_lists(_WORDS.take(pa.array(words[words >= 0])), (words >= 0).sum(axis=1)), " ")
    if cfg.style_words:
        title = pc.binary_join_element_wise(title, _style_suffixes(cfg).take(pa.array(item)), "")
    h_start, h_len = w.history_offsets[user], np.diff(w.history_offsets)[user]
    h_index = np.repeat(h_start - np.cumsum(h_len) + h_len, h_len) + np.arange(h_len.sum())
    tags = pa.array(np.array(TAGS)[tag_ids[tag_used]], pa.string())
    images = {"image": _image_paths(cfg).take(pa.array(item))} if cfg.image_dir else {}
    return pa.table({
        "row_id": pa.array(np.arange(start, start + n), pa.int64()),
        "user_id": pa.array(user, pa.int64()),
        "item_id": pa.array(item, pa.int64()),
        "timestamp": pa.array(1_700_000_000 + np.arange(start, start + n) * 60, pa.int64()),
        **{name: pa.array([f"{name}_{v}" for v in range(k)], pa.string()).take(pa.array(cols[name]))
           for name, k in CARDINALITY.items()},
        "tags": _lists(tags, n_tags),
        "price": pa.array(price),
        "score": pa.array(score),
        "noise_num": pa.array(noise_num),
        "title": title,
        **images,
        "history": _lists(pc.cast(pa.array(w.history_items[h_index]), pa.string()), h_len),
        "click": pa.array(click.astype(np.int8)),
        "true_ctr": pa.array(ctr),  # ground truth for tests and oracle AUC; no spec reads it
        "conversion": pa.array(conversion.astype(np.int8)),
    })


@lru_cache(maxsize=2)
def _style_suffixes(cfg: SyntheticConfig) -> pa.Array:
    """Per item, " vivid" / " muted" for a `style_words` share of the items with s > 0.5 / s < -0.5, else ""."""
    style = _world(cfg).item_style
    named = np.random.default_rng([cfg.seed, _STYLE_WORDS_STREAM]).random(cfg.items) < cfg.style_words
    suffix = np.where(style > 0.5, f" {STYLE_WORDS[0]}", np.where(style < -0.5, f" {STYLE_WORDS[1]}", ""))
    return pa.array(np.where(named, suffix, ""), pa.string())


def item_latents(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every item's topic (items,) and latent style s (items,): what its image shows."""
    w = _world(cfg)
    return w.item_topic.copy(), w.item_style.copy()


def draw_item_images(cfg: SyntheticConfig, items: np.ndarray | None = None) -> np.ndarray:
    """The images of `items` (default every item) as pixels, the same in every process.

    Each image is a light grey background with one shape of the item's topic (SHAPES) in the topic's hue,
    jittered per item (hue, saturation, brightness, position, size, angle) so that no two items look alike;
    the shape is filled with a sine grating at a random angle whose contrast, frequency and brightness grow
    with the item's style s; mild noise covers every pixel.

    Args:
        cfg: the dataset (its seed and item count decide the images).
        items: (n,) item ids.
    Returns:
        (n, IMAGE_SIZE, IMAGE_SIZE, 3) uint8.
    """
    w = _world(cfg)
    items = np.arange(cfg.items) if items is None else np.asarray(items, dtype=np.int64)
    if items.size and not 0 <= items.min() <= items.max() < cfg.items:
        raise ValueError(f"items must be in 0..{cfg.items - 1}")
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)  # (n, S, S, 3)
    blocks = items // _RENDER_BLOCK
    for block in np.unique(blocks):
        rows = blocks == block
        out[rows] = _draw_block(w, cfg.seed, int(block))[items[rows] - block * _RENDER_BLOCK]
    return out


def _draw_block(w: _World, seed: int, block: int) -> np.ndarray:
    """Items block * _RENDER_BLOCK ... of the world, drawn from the block's own random stream."""
    ids = np.arange(block * _RENDER_BLOCK, min((block + 1) * _RENDER_BLOCK, len(w.item_topic)))
    b, size = len(ids), IMAGE_SIZE
    topic, style = w.item_topic[ids], w.item_style[ids]
    rng = np.random.default_rng([seed, _IMAGE_STREAM, block])
    hue = topic / len(SHAPES) + rng.normal(0.0, 0.02, b)
    saturation = rng.uniform(0.6, 0.85, b)
    value = rng.uniform(0.6, 0.8, b) * (1.0 + 0.15 * np.tanh(style))
    centre = np.clip(rng.normal(0.0, 0.08, (2, b)), -0.2, 0.2)[:, :, None, None]  # (2, b, 1, 1)
    radius = (0.55 * np.exp(rng.uniform(-0.15, 0.15, b)))[:, None, None]  # (b, 1, 1)
    angle = rng.uniform(-0.35, 0.35, b)[:, None, None]
    background = rng.uniform(0.84, 0.94, b)[:, None, None, None]  # (b, 1, 1, 1)
    stripe_angle = rng.uniform(0.0, np.pi, b)[:, None, None]
    stripe_phase = rng.uniform(0.0, 2 * np.pi, b)[:, None, None]
    noise = rng.normal(0.0, 0.025, (b, size, size, 3))

    grid = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    x, y = grid[None, None, :] - centre[0], grid[None, :, None] - centre[1]  # (b, 1, S), (b, S, 1)
    u = (x * np.cos(angle) + y * np.sin(angle)) / radius  # (b, S, S), the shape's own axes
    v = (y * np.cos(angle) - x * np.sin(angle)) / radius  # (b, S, S)
    mask = np.zeros(u.shape, bool)  # (b, S, S)
    for shape in np.unique(topic):
        mask[topic == shape] = _shape_mask(int(shape), u[topic == shape], v[topic == shape])
    # Style: contrast 0.03 .. 0.37 and 1.5 .. 6 cycles across the image for s = -2 .. 2.
    contrast = (0.4 / (1.0 + np.exp(-1.2 * style)))[:, None, None]  # (b, 1, 1)
    cycles = (3.0 * np.exp(0.35 * style))[:, None, None]
    along = grid[None, None, :] * np.cos(stripe_angle) + grid[None, :, None] * np.sin(stripe_angle)  # (b, S, S)
    shade = 1.0 + contrast * np.sin(np.pi * cycles * along + stripe_phase)  # (b, S, S)
    colour = _hsv_to_rgb(hue % 1.0, saturation, value)[:, None, None, :]  # (b, 1, 1, 3)
    pixels = np.where(mask[..., None], colour * shade[..., None], background) + noise  # (b, S, S, 3)
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where (u, v), in the shape's own axes (radius 1), is inside SHAPES[shape]."""
    au, av, rho = np.abs(u), np.abs(v), np.hypot(u, v)
    inside = (
        lambda: rho <= 1.0,  # circle
        lambda: np.maximum(au, av) <= 0.85,  # square
        lambda: (v <= 0.6) & (au <= 0.55 * (v + 1.0)),  # triangle, apex up
        lambda: (rho <= 1.0) & (rho >= 0.6),  # ring
        lambda: (np.minimum(au, av) <= 0.3) & (np.maximum(au, av) <= 1.0),  # cross
        lambda: au + av <= 1.15,  # diamond
        lambda: rho <= 0.6 + 0.4 * np.cos(5 * np.arctan2(v, u)),  # star, five points
        lambda: av <= 0.35,  # band across the image
    )
    return inside[shape]()


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) hue, saturation, value in [0, 1] -> (n, 3) RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + 6.0 * h[:, None]) % 6.0  # (n, 3)
    return v[:, None] * (1.0 - s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))  # (n, 3)


def render_item_images(cfg: SyntheticConfig, folder: str | os.PathLike[str]) -> list[Path]:
    """Write every item's image as `folder/item_{i:05d}.png` (see `draw_item_images`); their paths.

    Idempotent and safe to run from several processes at once: a file already holding the same PNG is
    kept, others are written to a temporary file and renamed into place, and a marker written last lets
    later calls skip the drawing. A folder holding another dataset's images is refused, never mixed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"item_{i:05d}.png" for i in range(cfg.items)]
    marker = folder / _IMAGES_MARKER
    fingerprint = {"seed": cfg.seed, "items": cfg.items, "size": IMAGE_SIZE, "version": _RENDER_VERSION}
    found = _read_marker(marker)
    if found is not None and found != fingerprint:
        raise DataError(f"image_dir {folder} holds the images of another synthetic dataset ({found}, wanted "
                        f"{fingerprint}): use another image_dir or empty it")
    if found is not None and all(p.is_file() for p in paths):
        return paths
    for start in range(0, cfg.items, _RENDER_BLOCK):
        ids = np.arange(start, min(start + _RENDER_BLOCK, cfg.items))
        for i, pixels in zip(ids, draw_item_images(cfg, ids)):
            data = _png(pixels)
            if not (paths[i].is_file() and paths[i].read_bytes() == data):
                _write_atomically(paths[i], data)
    _write_atomically(marker, json.dumps(fingerprint).encode())
    return paths


@lru_cache(maxsize=4)  # once per process and config, like _world
def _image_paths(cfg: SyntheticConfig) -> pa.Array:
    """(items,) the path of each item's image, written first if need be."""
    return pa.array([str(p) for p in render_item_images(cfg, cfg.image_dir)], pa.string())


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"unreadable marker": str(marker)}


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part (the rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(cfg: SyntheticConfig = SyntheticConfig()) -> tuple[pa.Table, SyntheticTruth]:
    """Every chunk in this process, as one table, with what was planted."""
    table = pa.concat_tables([generate_chunk(cfg, c) for c in range(num_chunks(cfg))])
    truth = SyntheticTruth(
        # user_id: the topic match depends on the user's preferred topics, a per-user latent the id identifies
        informative=("site", "ad_type", "tags", "score", "price", "region", "device", "daypart", "slot",
                     "item_id", "user_id", "history", "title", *(("image",) if cfg.image_dir else ())),
        noise=("noise_a", "noise_b", "noise_num"),
        pairs=(("region", "ad_type"),),
        triples=(("device", "daypart", "slot"),),
        cardinality=dict(CARDINALITY),
        click_rate=float(pc.mean(table["click"]).as_py()),
        conversion_rate=float(pc.mean(table["conversion"]).as_py()),
    )
    return table, truth
