"""data.py: nested subsets, the validation split, augmentation equal to torchvision's, loading and
its errors, fingerprints."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import data
from conftest import write_synthetic_cifar10


def test_subsets_are_deterministic_and_nested():
    small = data.subset_indices(50_000, 1_000, subset_seed=0)
    large = data.subset_indices(50_000, 20_000, subset_seed=0)
    assert np.array_equal(small, data.subset_indices(50_000, 1_000, subset_seed=0))
    assert np.array_equal(large[:1_000], small)
    assert len(set(large)) == 20_000
    assert not np.array_equal(small, data.subset_indices(50_000, 1_000, subset_seed=1))
    for bad in (0, 50_001):
        with pytest.raises(ValueError, match="dataset_size"):
            data.subset_indices(50_000, bad)


def random_images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_crop_flip_equals_torchvision_pad_crop_flip():
    images = random_images(16)
    dy, dx, flip = data.sample_crop_flip(16, torch.Generator().manual_seed(1))
    out = data.crop_flip(images, dy, dx, flip)
    for i in range(16):
        ref = TF.crop(TF.pad(images[i], data.PAD, fill=0), int(dy[i]), int(dx[i]), 32, 32)
        ref = TF.hflip(ref) if flip[i] else ref
        assert torch.equal(out[i], ref)


@pytest.mark.parametrize("pad", [1, 4])
def test_crop_flip_reflect_equals_numpy_reflect_pad_crop_flip(pad):
    images = random_images(9, seed=4)
    g = torch.Generator().manual_seed(pad)
    dy, dx = (torch.randint(2 * pad + 1, (9,), generator=g) for _ in range(2))
    flip = torch.rand(9, generator=g) < 0.5
    out = data.crop_flip(images, dy, dx, flip, pad=pad, reflect=True)
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    for i in range(9):
        ref = torch.from_numpy(padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32].copy())
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


def test_every_augmented_image_is_a_window_of_the_padded_image():
    images = random_images(4, seed=2)
    g = data.epoch_generator(seed=3, epoch=1)
    x, _ = next(data.tensor_batches(images, torch.arange(4), 4, seed=3, epoch=1))
    order = torch.randperm(4, generator=g)  # tensor_batches draws the order first
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4)).float() / 255
    for k, i in enumerate(order.tolist()):
        windows = [padded[i, :, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(x[k], w) for w in windows)


def test_offsets_uniform_over_81_positions_and_fair_flips():
    n = 81 * 400
    dy, dx, flip = data.sample_crop_flip(n, torch.Generator().manual_seed(0))
    counts = torch.bincount(dy * 9 + dx, minlength=81).double()
    # Pearson chi-square with 80 degrees of freedom: mean 80, sd 12.6; 140 is ~4.7 sd out.
    chi2 = (((counts - n / 81) ** 2) / (n / 81)).sum().item()
    assert counts.min() > 0 and chi2 < 140
    assert abs(flip.double().mean().item() - 0.5) < 4 * 0.5 / n ** 0.5


def test_tensor_batches_same_seed_same_batches_and_cover_each_image_once():
    images, labels = random_images(50), torch.arange(50)
    run = lambda seed, epoch: list(data.tensor_batches(images, labels, 16, seed, epoch))
    a, b, c = run(0, 1), run(0, 1), run(0, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert [len(y) for _, y in a] == [16, 16, 16, 2]
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(50))
    assert a[0][0].dtype == torch.float32 and 0 <= a[0][0].min() and a[0][0].max() <= 1


def test_torchvision_reference_pipeline_is_seeded():
    images, labels = random_images(20), torch.arange(20)
    indices = np.arange(5, 15)
    run = lambda: list(data.torchvision_batches(images, labels, indices, 4, seed=0, epoch=1))
    a, b = run(), run()
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(5, 15))


def test_load_synthetic_layout(tmp_path):
    cifar = data.load_cifar10(write_synthetic_cifar10(str(tmp_path), per_batch=10, num_test=7))
    assert cifar.train_images.shape == (50, 3, 32, 32) and cifar.train_images.dtype == torch.uint8
    assert cifar.test_labels.shape == (7,)


def test_truncated_batch_is_named(tmp_path):
    root = write_synthetic_cifar10(str(tmp_path), per_batch=10, num_test=7)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(data.DataError, match="data_batch_3"):
        data.load_cifar10(root)


def test_offline_download_failure_explains_what_to_do(tmp_path, monkeypatch):
    def offline(data_dir):
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(data, "download_cifar10", offline)
    with pytest.raises(data.DataError) as err:
        data.load_cifar10(str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "cifar-10-batches-py" in message and "could not be downloaded" in message
    assert "name resolution" in message and "--data_dir" in message


@pytest.mark.parametrize("where", ["data_dir", "batches"])
def test_a_file_in_place_of_the_data_folder_is_named_without_a_download(tmp_path, monkeypatch,
                                                                          where):
    monkeypatch.setattr(data, "download_cifar10", lambda d: pytest.fail("tried to download"))
    path = tmp_path / "afile" if where == "data_dir" else tmp_path / data.BATCHES_DIR
    path.write_text("not a folder")
    with pytest.raises(data.DataError, match=f"{path} is a file, not a folder"):
        data.load_cifar10(str(tmp_path / "afile" if where == "data_dir" else tmp_path))


def test_fingerprint_tells_subsets_apart():
    images, labels = random_images(10), torch.arange(10)
    assert data.fingerprint(images, labels) == data.fingerprint(images.clone(), labels.clone())
    assert data.fingerprint(images[:9], labels[:9]) != data.fingerprint(images, labels)


def test_source_fingerprint_names_the_data_set_not_the_subset(synthetic_data_dir, tmp_path):
    cifar = data.load_cifar10(synthetic_data_dir)
    small, large = (data.fingerprints(cifar, cifar.train_images[:n], cifar.train_labels[:n])
                    for n in (100, 400))
    assert small["source_fingerprint"] == large["source_fingerprint"]
    assert small["data_fingerprint"] != large["data_fingerprint"]
    other = data.load_cifar10(write_synthetic_cifar10(str(tmp_path), seed=1))
    assert data.fingerprints(other, other.train_images[:100], other.train_labels[:100]) \
        ["source_fingerprint"] != small["source_fingerprint"]


def test_offsets_match_torchvision_random_crop_distribution():
    """Two-sample chi-square between our sampler and torchvision's RandomCrop on padded images."""
    from torchvision import transforms
    torch.manual_seed(0)
    n = 81 * 100
    padded = torch.zeros(3, 40, 40)
    theirs = torch.tensor([transforms.RandomCrop.get_params(padded, (32, 32))[:2] for _ in range(n)])
    dy, dx, _ = data.sample_crop_flip(n, torch.Generator().manual_seed(1))
    a = torch.bincount(theirs[:, 0] * 9 + theirs[:, 1], minlength=81).double()
    b = torch.bincount(dy * 9 + dx, minlength=81).double()
    chi2 = (((a - b) ** 2) / (a + b)).sum().item()  # ~chi2(80) if both are the same distribution
    assert a.min() > 0 and b.min() > 0 and chi2 < 140


def test_labels_outside_0_to_9_are_a_data_error(tmp_path):
    root = write_synthetic_cifar10(str(tmp_path))
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch["labels"][7] = 10
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(data.DataError, match=r"data_batch_2 is corrupted: label 10 of image 7"):
        data.load_cifar10(root)


def test_validation_split_is_disjoint_deterministic_and_keeps_the_nested_subsets():
    tr, val = data.split_indices(50_000, 20_000, 5_000, subset_seed=0)
    assert len(val) == 5_000 and not set(tr) & set(val)
    assert np.array_equal(tr, data.subset_indices(50_000, 20_000, 0))  # same D images as without
    tr2, val2 = data.split_indices(50_000, 45_000, 5_000, subset_seed=0)
    assert np.array_equal(val, val2) and np.array_equal(tr2[:20_000], tr)  # val fixed across D
    assert data.val_count(0.1, 50_000) == 5_000 and data.val_count(300, 50_000) == 300
    with pytest.raises(ValueError, match="must fit"):
        data.split_indices(50_000, 45_001, 5_000)


def test_normalize_matches_torchvision():
    from torchvision import transforms
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ours = data.to_float(images.clone(), normalize=True)
    ref = torch.stack([transforms.Normalize(data.MEAN, data.STD)(img.float() / 255) for img in images])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_no_augment_serves_the_images_unchanged():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(50)
    batches = list(data.tensor_batches(images, labels, 16, seed=0, epoch=1, augment=False))
    order = torch.cat([y for _, y in batches])
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(torch.cat([x for x, _ in batches]), data.to_float(images[order]))


def test_an_empty_data_dir_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(data.DataError, match="--data_dir is empty"):
        data.load_cifar10("")
    with pytest.raises(data.DataError, match="--data_dir is empty"):
        data.load_cifar10("  ")


def test_a_failed_download_leaves_no_folder_or_archive_behind(tmp_path, monkeypatch):
    """Offline: the download fails; a data folder it created is gone again, and in a folder that
    was there only what was there stays (no half archive)."""
    import torchvision.datasets.utils as tv

    def failing(url, download_root, md5):
        os.makedirs(download_root, exist_ok=True)
        with open(os.path.join(download_root, os.path.basename(url)), "wb") as f:
            f.write(b"half an archive")
        raise OSError("no network")
    monkeypatch.setattr(tv, "download_and_extract_archive", failing)
    fresh = tmp_path / "fresh"
    with pytest.raises(data.DataError, match="could not be downloaded"):
        data.load_cifar10(str(fresh))
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("user's file")
    with pytest.raises(data.DataError, match="could not be downloaded"):
        data.load_cifar10(str(kept))
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]
