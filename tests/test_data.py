"""Datasets: every source, the splits, the sampler, and the message when data is missing."""

import gzip
import logging
import pickle
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tasks import data
from tests import optional


@pytest.fixture(autouse=True)
def fresh_cache():
  data.load.cache_clear()
  yield
  data.load.cache_clear()


def _check_splits(splits, sizes, shape):
  assert [splits[s].labels.shape[0] for s in data.SPLITS] == list(sizes)
  for s in data.SPLITS:
    assert splits[s].images.dtype == jnp.uint8 and splits[s].images.shape[1:] == shape
    assert splits[s].labels.dtype == jnp.int32
    assert isinstance(splits[s].images, jax.Array)


def test_tfds_data_source_mock(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
  with tfds.testing.mock_data(num_examples=40):
    fmnist = data.load("fashion_mnist")
    cifar = data.load("cifar10")
  _check_splits(fmnist, (32, 4, 4, 40), (28, 28, 1))
  _check_splits(cifar, (32, 4, 4, 40), (32, 32, 3))


def _write_idx(path: Path, array: np.ndarray):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_in_a_data_dir(tmp_path):
  rng = np.random.default_rng(0)
  train_images = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(100) % 10)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
  splits = data.load("fashion_mnist", data_dir=str(tmp_path))
  _check_splits(splits, (80, 10, 10, 20), (28, 28, 1))
  np.testing.assert_array_equal(splits["train"].images[..., 0], train_images[:80])  # file order
  resized = data.load("fashion_mnist", data_dir=str(tmp_path), image_size=8)
  _check_splits(resized, (80, 10, 10, 20), (8, 8, 1))


def test_cifar10_batches_folder(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f)
  splits = data.load("cifar10", data_dir=str(tmp_path))
  _check_splits(splits, (40, 5, 5, 10), (32, 32, 3))
  with open(folder / "data_batch_1", "rb") as f:
    first = pickle.load(f, encoding="bytes")[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
  np.testing.assert_array_equal(splits["train"].images[0], first)  # channels last


def test_real_fashion_mnist_files(caplog):
  """The real files load, and loading them logs no warning (tfds's note about the unprepared
  folder it looked in first is not news)."""
  optional.require_fashion_mnist()
  with caplog.at_level(logging.INFO):
    splits = data.load("fashion_mnist")
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
  _check_splits(splits, (48000, 6000, 6000, 10000), (28, 28, 1))
  counts = np.bincount(np.asarray(splits["test"].labels), minlength=10)
  np.testing.assert_array_equal(counts, np.full(10, 1000))  # the real test set: 1000 per class
  assert 60 < float(jnp.mean(splits["train"].images.astype(jnp.float32))) < 80  # mean pixel ~72.9


def test_digits_ship_with_scikit_learn():
  splits = data.load("digits")
  _check_splits(splits, (1258, 180, 179, 180), (8, 8, 1))
  assert int(jnp.max(splits["train"].images)) == 255


def test_missing_data_names_the_ways_to_provide_it(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
  with pytest.raises(ValueError) as err:
    data.load("fashion_mnist", data_dir=str(tmp_path))
  message = str(err.value)
  assert message.startswith(f"data_dir: dataset 'fashion_mnist' not found (data_dir={tmp_path}); "
                            "tried tensorflow-datasets")
  for way in ("apt-get install dataset-fashion-mnist", "--data-dir",
              "train-images-idx3-ubyte", "tensorflow-datasets data dir"):
    assert way in message
  with pytest.raises(ValueError, match="cifar-10-batches-py folder"):
    data.load("cifar10", data_dir=str(tmp_path))


def test_epoch_sampler_visits_every_example_once_per_epoch():
  n, batch = 103, 16
  split = data.Split(images=jnp.zeros((n, 1, 1, 1), jnp.uint8), labels=jnp.arange(n),
                     units=jnp.asarray(data._units(n)))
  seed = jax.random.key_data(jax.random.key(7))
  stream = np.concatenate([np.asarray(data.epoch_indices(split, seed, p, batch))
                           for p in range(0, 3 * n, batch)])[:3 * n]
  epochs = stream.reshape(3, n)
  for e in epochs:
    assert sorted(e.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])  # a fresh order each epoch
  again = np.asarray(data.epoch_indices(split, seed, 5, batch))
  np.testing.assert_array_equal(again, stream[5:5 + batch])  # a function of (seed, position)
