"""Image datasets for the inner tasks: loading, splits on the device, batches by index.

Sources, tried in this order:

1. ``tfds.data_source(name, data_dir=...)`` where the dataset is prepared (it reads the
   array_record files without TensorFlow; tests use ``tfds.testing.mock_data``).
2. Raw files: FashionMNIST's IDX files (``train-images-idx3-ubyte[.gz]`` and friends) in
   ``data_dir`` or in ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``);
   CIFAR-10's ``cifar-10-batches-py`` folder (in ``data_dir``, or ``data_dir`` itself).
3. ``digits``: scikit-learn's bundled 8x8 digits (no download; the offline default).
4. Tables, stored as one-row "images" ``[n, 1, features, 1]`` with each feature scaled by its
   range to ``0..255`` (8 bits), so that they live and batch as images do: ``breast_cancer``
   (scikit-learn's bundled Wisconsin data, 569 x 30, 2 classes), ``wine`` (scikit-learn's bundled
   wine recognition data, 178 x 13, 3 classes) and ``synthetic`` (scikit-learn's
   ``make_classification``, seed 0: 8000 x 40, 24 informative, 5 classes).

Splits: the source's train split is cut (in file order) into ``train`` 80%, ``inner_valid`` 10%
and ``outer_valid`` 10%; its test split is ``test``. Digits has no test split: a fixed shuffle
is cut 70/10/10/10. Every split lives once on the device as ``uint8`` images ``[n, h, w, c]``
and ``int32`` labels; batches are gathered by index inside compiled code (no host round trip),
so memory is the dataset's own size, whatever the number of particles.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import struct as struct_lib
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt_meta import absl_notes
from lopt_meta.errors import ConfigError

SPLITS = ("train", "inner_valid", "outer_valid", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "digits": 10, "breast_cancer": 2,
               "synthetic": 5, "wine": 3}
TABLES = ("breast_cancer", "synthetic", "wine")


class Split(NamedTuple):
  """One split on the device: ``images [n, h, w, c] uint8``, ``labels [n] int32`` and
  ``units``: the integers in ``[1, n)`` coprime with ``n`` (for random permutations)."""
  images: jax.Array
  labels: jax.Array
  units: jax.Array


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _missing(name: str, data_dir: str | None, tried: list[str]) -> ConfigError:
  ways = {
      "fashion_mnist": ("install Debian's dataset-fashion-mnist (apt-get install "
                        "dataset-fashion-mnist: the IDX files go to /usr/share/datasets/fashion-mnist), "
                        "or pass --data-dir DIR holding train-images-idx3-ubyte[.gz], "
                        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                        "t10k-labels-idx1-ubyte[.gz], or a tensorflow-datasets data dir where "
                        "fashion_mnist is prepared"),
      "cifar10": ("pass --data-dir DIR holding the cifar-10-batches-py folder (data_batch_1..5, "
                  "test_batch), or a tensorflow-datasets data dir where cifar10 is prepared"),
  }[name]
  where = f" (data_dir={data_dir})" if data_dir else ""
  return ConfigError("data_dir", f"dataset {name!r} not found{where}; tried {'; '.join(tried)}. "
                     f"To provide it: {ways}")


def _from_tfds(name: str, data_dir: str | None):
  """``{split: (images, labels)}`` from a prepared tfds dataset, or ``None``."""
  try:
    import tensorflow_datasets as tfds  # imported lazily: slow, and only this source needs it
    out = {}
    for split in ("train", "test"):
      # Where the dataset is not prepared, tfds notes the empty folder it looked in; we then
      # read the raw files, so that is not news to print.
      with absl_notes.dropped("has no dataset_info.json"):
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
      records = [source[i] for i in range(len(source))]
      out[split] = (np.stack([np.asarray(r["image"], np.uint8) for r in records]),
                    np.asarray([int(r["label"]) for r in records], np.int32))
    return out
  except Exception:  # not prepared (or not readable): fall through to the raw files
    return None


def _read_idx(path: Path) -> np.ndarray:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  zero, dtype_code, ndim = struct_lib.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file")
  shape = struct_lib.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
  for candidate in (folder / stem, folder / f"{stem}.gz"):
    if candidate.is_file():
      return candidate
  return None


def _from_idx(folder: Path):
  names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
           "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
  paths = {split: tuple(_find(folder, stem) for stem in stems) for split, stems in names.items()}
  if any(p is None for pair in paths.values() for p in pair):
    return None
  return {split: (_read_idx(img)[..., None], _read_idx(lab).astype(np.int32))
          for split, (img, lab) in paths.items()}


def _from_cifar_batches(folder: Path):
  folder = folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder
  files = {"train": [folder / f"data_batch_{i}" for i in range(1, 6)], "test": [folder / "test_batch"]}
  if not all(f.is_file() for fs in files.values() for f in fs):
    return None
  out = {}
  for split, fs in files.items():
    images, labels = [], []
    for f in fs:
      with open(f, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
      images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels.append(np.asarray(batch[b"labels"], np.int32))
    out[split] = (np.concatenate(images), np.concatenate(labels))
  return out


def _digits():
  from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
  digits = load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  return images[order], labels[order]


def _table(name: str):
  """A table as uint8 one-row images (each feature scaled by its range) and int32 labels."""
  if name == "breast_cancer":
    from sklearn.datasets import load_breast_cancer  # bundled with scikit-learn: no download
    features, labels = load_breast_cancer(return_X_y=True)
  elif name == "wine":
    from sklearn.datasets import load_wine  # bundled with scikit-learn: no download
    features, labels = load_wine(return_X_y=True)
  else:
    from sklearn.datasets import make_classification
    features, labels = make_classification(
        n_samples=8000, n_features=40, n_informative=24, n_redundant=8, n_classes=5,
        n_clusters_per_class=2, class_sep=1.0, random_state=0)
  low, high = features.min(axis=0), features.max(axis=0)
  scaled = np.rint((features - low) / np.maximum(high - low, 1e-12) * 255.0).astype(np.uint8)
  order = np.random.default_rng(0).permutation(len(labels))
  return scaled[order][:, None, :, None], labels[order].astype(np.int32)


def _cut(images: np.ndarray, labels: np.ndarray, fractions) -> list[tuple[np.ndarray, np.ndarray]]:
  n = len(labels)
  edges = np.rint(np.cumsum((0.0,) + tuple(fractions)) * n).astype(int)
  return [(images[a:b], labels[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size and images.shape[2] == size:
    return images
  out = jax.image.resize(jnp.asarray(images, jnp.float32), (images.shape[0], size, size,
                                                           images.shape[3]),
                         method="linear", antialias=True)
  return np.asarray(jnp.clip(jnp.rint(out), 0, 255)).astype(np.uint8)


def _units(n: int) -> np.ndarray:
  a = np.arange(1, max(n, 2), dtype=np.int64)
  return a[np.gcd(a, n) == 1].astype(np.int32)


@functools.lru_cache(maxsize=8)
def load(name: str, *, data_dir: str | None = None, image_size: int | None = None) -> dict[str, Split]:
  """The four splits of dataset ``name`` on the device (cached per process).

  Args:
    name: ``fashion_mnist``, ``cifar10``, ``digits``, ``breast_cancer``, ``wine`` or
      ``synthetic``.
    data_dir: where to look first (a tfds data dir, an IDX folder, or a CIFAR-10 folder).
    image_size: resize images to ``image_size x image_size`` (bilinear, antialiased) once at load.

  Raises:
    ConfigError: the dataset is nowhere to be found; the message names the ways to provide it.
  """
  if name not in NUM_CLASSES:
    raise ConfigError("dataset", f"unknown dataset {name!r}; valid: {', '.join(sorted(NUM_CLASSES))}")
  if name == "digits":
    parts = _cut(*_digits(), (0.7, 0.1, 0.1, 0.1))
  elif name in TABLES:
    parts = _cut(*_table(name), (0.7, 0.1, 0.1, 0.1))
  else:
    tried = []
    arrays = _from_tfds(name, data_dir)
    tried.append("tensorflow-datasets" + (f" in {data_dir}" if data_dir else ""))
    folders = [Path(data_dir)] if data_dir else []
    if name == "fashion_mnist":
      folders.append(DEBIAN_FASHION_MNIST)
    for folder in folders:
      if arrays is not None:
        break
      arrays = _from_idx(folder) if name == "fashion_mnist" else _from_cifar_batches(folder)
      tried.append(f"{'IDX files' if name == 'fashion_mnist' else 'cifar-10-batches-py'} in {folder}")
    if arrays is None:
      raise _missing(name, data_dir, tried)
    parts = _cut(*arrays["train"], (0.8, 0.1, 0.1)) + [arrays["test"]]
  out = {}
  for split, (images, labels) in zip(SPLITS, parts):
    if image_size is not None:
      images = _resize(images, image_size)
    if len(labels) > 65536:
      raise ConfigError("dataset", f"split {split!r} of {name!r} has {len(labels)} examples; the "
                        "index sampler supports up to 65536")
    out[split] = Split(images=jnp.asarray(images), labels=jnp.asarray(labels),
                       units=jnp.asarray(_units(len(labels))))
  return out


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

def epoch_indices(split: Split, seed: jax.Array, position: jax.Array, batch_size: int) -> jax.Array:
  """Indices ``[batch_size]`` of the examples at ``position .. position + B - 1`` of a stream
  that visits every example once per epoch, in a fresh random order each epoch.

  Epoch ``e``'s order is the affine permutation ``x -> (a_e x + b_e) mod n`` with ``a_e`` a random
  unit mod ``n`` and ``b_e`` random, both hashed from the seed and ``e``: a shuffle that needs
  no per-particle storage. ``seed``: ``uint32 [2]`` (a per-episode data seed, e.g. a key's data);
  ``position`` counts the examples consumed.
  """
  n = split.labels.shape[0]
  k = position + jnp.arange(batch_size, dtype=jnp.int32)
  epoch, x = k // n, (k % n).astype(jnp.uint32)
  seed = jnp.asarray(seed, jnp.uint32)

  def affine(e):
    h = _mix32(seed[0] ^ _mix32(seed[1] ^ jnp.asarray(e).astype(jnp.uint32) * jnp.uint32(0x9E3779B9)))
    a = split.units[h % jnp.uint32(split.units.shape[0])].astype(jnp.uint32)
    b = _mix32(h ^ jnp.uint32(0x85EBCA6B)) % jnp.uint32(n)
    return a, b
  e0 = position // n
  (a0, b0), (a1, b1) = affine(e0), affine(e0 + 1)  # a batch spans at most two epochs (B <= n)
  a = jnp.where(epoch == e0, a0, a1)
  b = jnp.where(epoch == e0, b0, b1)
  return ((a * x + b) % jnp.uint32(n)).astype(jnp.int32)


def _mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a cheap, well-mixing bijection of uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def random_indices(split: Split, key: jax.Array, batch_size: int) -> jax.Array:
  """``batch_size`` indices drawn uniformly (with replacement) from the split."""
  return jax.random.randint(key, (batch_size,), 0, split.labels.shape[0])


def gather(split: Split, indices: jax.Array) -> dict[str, jax.Array]:
  """``{"image": float32 [B, h, w, c] in [0, 1], "label": int32 [B]}`` for ``indices``."""
  return {"image": split.images[indices].astype(jnp.float32) / 255.0,
          "label": split.labels[indices]}
