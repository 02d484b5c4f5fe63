"""Shared fixtures: CIFAR-10 folders for end-to-end runs.

data_dir: a small synthetic data set in the official pickle layout whose classes differ by mean
colour, so a tiny network can learn it. real_data_dir: the real (offline JPEG) copy under data/
when CI prepared it from ../shared, else the synthetic one.
"""
import os
import pickle

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA = os.path.join(REPO, "data")


def write_synthetic_cifar10(root, per_batch=100, num_test=200, seed=0):
    """root/cifar-10-batches-py/ with 5 train batches of per_batch images and one test batch."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    class_colour = rng.integers(40, 215, size=(10, 3))

    def batch(n):
        labels = rng.integers(0, 10, size=n)
        images = class_colour[labels][:, :, None] + rng.normal(0, 30, size=(n, 3, 1024))
        return {"data": np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072),
                "labels": labels.tolist()}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch(num_test if name == "test_batch" else per_batch), f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return root


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    return write_synthetic_cifar10(str(tmp_path_factory.mktemp("synthetic_cifar")))


@pytest.fixture(scope="session")
def data_dir(synthetic_data_dir):
    """Most end-to-end tests: the small synthetic set. Reading the real 50,000 images and
    evaluating 10,000 per epoch made each training process seconds slower, most of the tests'
    time, and proves nothing the synthetic set does not."""
    return synthetic_data_dir


@pytest.fixture(scope="session")
def real_data_dir(synthetic_data_dir):
    """The shared CIFAR-10 copy when prepared (CI prepares it), else the synthetic one: for the
    tests that check the real files' layout through every pipeline."""
    if os.path.exists(os.path.join(REAL_DATA, "cifar-10-batches-py", "test_batch")):
        return REAL_DATA
    return synthetic_data_dir
