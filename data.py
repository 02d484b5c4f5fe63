"""CIFAR-10: loading, seeded nested subsets, and the recipe's augmentation in two implementations.

- `tensor` loader (default): all images stay on the training device as uint8; each batch is
  cropped and flipped with a few batched tensor ops (the airbench approach), so there is no
  DataLoader, no worker process and no host round-trip per step.
- `torchvision` loader: the recipe taken literally (torchvision transforms on PIL images,
  torch.utils.data.Subset, DataLoader). Kept as the reference that benchmarks and equivalence
  tests compare against.

Both draw their randomness from (seed, epoch) alone, so an epoch can be replayed on resume
without saving generator states.
"""
import functools
import hashlib
import os
import pickle
import shutil
from dataclasses import dataclass

import numpy as np
import torch

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the official archive's, as torchvision lists it
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
NUM_TRAIN = 50_000
NUM_CLASSES = 10
PAD = 4  # RandomCrop(32, padding=4)
CROP = 32
NUM_OFFSETS = 2 * PAD + 1  # 9 positions per axis, 81 crops in all
AUGMENT_CHUNK = 10_000  # images per gather: bounds the padded copy to ~50 MB
# Per-channel mean and std of CIFAR-10's training pixels in [0, 1], as the ResNet-8 SGD-vs-AdamW
# study lists them.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class DataError(RuntimeError):
    """The data set is missing, corrupted or cannot be fetched; the message says what to do."""


@dataclass
class CIFAR10:
    train_images: torch.Tensor  # uint8 [50000, 3, 32, 32]
    train_labels: torch.Tensor  # int64 [50000]
    test_images: torch.Tensor   # uint8 [10000, 3, 32, 32]
    test_labels: torch.Tensor   # int64 [10000]


# ---------------------------------------------------------------------------------------------
# Loading


def _read_batch(path: str):
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as e:  # truncated pickles raise EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"CIFAR-10 batch file {path} is unreadable or corrupted "
                        f"({type(e).__name__}: {e}). Delete it and its siblings and run again "
                        "to re-download, or put an intact copy there.") from e
    if len(images) != len(labels) or len(labels) == 0:
        raise DataError(f"CIFAR-10 batch file {path} is corrupted: "
                        f"{len(images)} images but {len(labels)} labels.")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise DataError(f"CIFAR-10 batch file {path} is corrupted: label {labels[bad][0]} of image "
                        f"{int(bad.argmax())} is outside 0..{NUM_CLASSES - 1}.")
    return images, labels


def download_cifar10(data_dir: str) -> None:
    """Fetch and unpack the official archive (md5-checked) into data_dir. A failure leaves no
    trace: a data_dir it created is removed, and in one that existed the archive it began."""
    from torchvision.datasets.utils import download_and_extract_archive
    archive = os.path.join(data_dir, os.path.basename(CIFAR10_URL))
    had_folder, had_archive = os.path.exists(data_dir), os.path.exists(archive)
    try:
        download_and_extract_archive(CIFAR10_URL, download_root=data_dir, md5=CIFAR10_MD5)
    except BaseException:
        if not had_folder:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif not had_archive and os.path.isfile(archive):
            os.remove(archive)
        raise


def data_dir_error(data_dir: str):
    """Why data_dir cannot hold CIFAR-10 whatever is downloaded, or None: config.validate asks
    with the other settings, before anything runs."""
    if not data_dir.strip():   # os.path.join would read it as the current folder
        return (f"--data_dir is empty: name the folder that holds (or will hold) {BATCHES_DIR}/, "
                f"e.g. data")
    for path in (data_dir, os.path.join(data_dir, BATCHES_DIR)):
        if os.path.exists(path) and not os.path.isdir(path):  # a download could not help
            return (f"{path} is a file, not a folder: --data_dir names the folder that holds "
                    f"{BATCHES_DIR}/")
    return None


def load_cifar10(data_dir: str = "data", download: bool = True) -> CIFAR10:
    """All of CIFAR-10 from data_dir/cifar-10-batches-py (the official python layout), fetched
    first if absent."""
    paths = ensure_cifar10(data_dir, download)
    train = [_read_batch(p) for p in paths[:-1]]
    test_images, test_labels = _read_batch(paths[-1])
    return CIFAR10(torch.from_numpy(np.concatenate([x for x, _ in train])),
                   torch.from_numpy(np.concatenate([y for _, y in train])),
                   torch.from_numpy(test_images), torch.from_numpy(test_labels))


def ensure_cifar10(data_dir: str, download: bool = True) -> list:
    """The batch files' paths (training batches, then the test batch), fetched first if absent;
    a DataError says what is missing and how to put it there. sweep.py asks once before it
    launches, so that its runs neither each fail alone nor race each other's downloads."""
    error = data_dir_error(data_dir)
    if error:
        raise DataError(error)
    folder = os.path.join(data_dir, BATCHES_DIR)
    paths = [os.path.join(folder, name) for name in TRAIN_FILES + [TEST_FILE]]
    if not all(os.path.exists(p) for p in paths):
        if not download:
            raise DataError(f"CIFAR-10 not found: expected {folder}/ with {TRAIN_FILES + [TEST_FILE]}.")
        try:
            download_cifar10(data_dir)
        except Exception as e:
            raise DataError(
                f"CIFAR-10 was not found in {folder}/ and could not be downloaded from "
                f"{CIFAR10_URL} ({type(e).__name__}: {e}). On a machine without internet, "
                f"copy the official python-version files (data_batch_1..5, test_batch, "
                f"batches.meta) into {folder}/, or unpack cifar-10-python.tar.gz into "
                f"{data_dir}/, then run again; --data_dir points elsewhere.") from e
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"The downloaded archive did not contain {missing}.")
    return paths


def subset_indices(num_available: int, dataset_size: int, subset_seed: int = 0) -> np.ndarray:
    """The first D images of one fixed permutation: subsets of one subset_seed are nested, so D is
    the only thing that changes along a data sweep."""
    return split_indices(num_available, dataset_size, 0, subset_seed)[0]


def val_count(val_size: float, num_available: int) -> int:
    """Validation images asked for: a count, or a fraction (< 1) of the training images."""
    return round(val_size * num_available) if val_size < 1 else int(val_size)


def split_indices(num_available: int, dataset_size: int, num_val: int = 0, subset_seed: int = 0):
    """(train, val) indices. The validation images are the last num_val of the subset_seed
    permutation, carved off before subsetting; the D training images are the first D of the rest,
    so they are the same nested subsets as without a validation split."""
    if not 0 <= num_val < num_available or not 1 <= dataset_size <= num_available - num_val:
        raise ValueError(f"dataset_size {dataset_size} (>= 1) + {num_val} validation images "
                         f"must fit in the {num_available} training images")
    order = np.random.default_rng(subset_seed).permutation(num_available)
    return order[:dataset_size], order[num_available - num_val:]


def fingerprint(*tensors: torch.Tensor) -> str:
    """Short sha256 of the tensors' bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(memoryview(t.cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()[:16]


def fingerprints(cifar: CIFAR10, train_images, train_labels) -> dict:
    """data_fingerprint: exactly the training examples used (differs with D and subset_seed).
    source_fingerprint: the whole data set, training and test, so runs on different copies of
    CIFAR-10 (the official one, a re-encoded one) never mix silently, whatever their D."""
    return dict(data_fingerprint=fingerprint(train_images, train_labels),
                source_fingerprint=fingerprint(cifar.train_images, cifar.train_labels,
                                               cifar.test_images, cifar.test_labels))


def epoch_seed(seed: int, epoch: int) -> int:
    """Randomness of one epoch (order and augmentation) is a function of (seed, epoch) only;
    the prime keeps streams distinct for any seed < 1e6 and epoch < 1e6."""
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(epoch_seed(seed, epoch))
    return g


# ---------------------------------------------------------------------------------------------
# Tensor pipeline: uint8 on the device, augmentation as one gather per batch


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
              flip: torch.Tensor, pad: int = PAD, reflect: bool = False) -> torch.Tensor:
    """Crop the 32x32 window at (dy, dx) of each padded (32+2*pad square) image, mirrored where
    flip. images uint8 [B, C, 32, 32]; dy, dx int64 [B] in 0..2*pad; flip bool [B]. Zero padding
    (RandomCrop's), or reflect padding (airbench's translate) read through an index table.
    Indexing a view of every window copies whole rows: 2.1x sooner on a CPU core than gathering
    each pixel by its own row and column index, for the same bytes."""
    if not pad:  # padded already (airbench pads its training set once)
        padded = images
    elif reflect:
        table = reflect_index(images.shape[-1], pad, images.device)
        padded = images[:, :, table][:, :, :, table]
    else:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    windows = padded.unfold(2, CROP, 1).unfold(3, CROP, 1)  # [B, C, offsets, offsets, 32, 32]
    out = windows[torch.arange(len(images), device=images.device), :, dy, dx]
    out[flip] = out[flip].flip(-1)
    return out


def reflect_index(size: int, pad: int, device=None) -> torch.Tensor:
    """Source index of each position of a reflect-padded axis (np.pad mode='reflect')."""
    i = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def sample_crop_flip(n: int, generator: torch.Generator):
    """Offsets uniform over the 81 positions and a fair coin per image, as RandomCrop(32, 4) and
    RandomHorizontalFlip draw them."""
    dy = torch.randint(NUM_OFFSETS, (n,), generator=generator, device=generator.device)
    dx = torch.randint(NUM_OFFSETS, (n,), generator=generator, device=generator.device)
    flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
    return dy, dx, flip


def to_float(images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """uint8 -> float in [0, 1], as ToTensor does (the scaling recipe uses no normalisation); with
    normalize, then per-channel (x - MEAN) / STD as transforms.Normalize does."""
    x = images.float().div_(255)
    if normalize:
        mean, std = mean_std(x.device)
        x = x.sub_(mean).div_(std)
    return x


@functools.lru_cache
def mean_std(device: torch.device):
    """MEAN and STD as [3, 1, 1] tensors, made once per device: a copy to the GPU per batch would
    wait on the host."""
    return tuple(torch.tensor(v, device=device).view(-1, 1, 1) for v in (MEAN, STD))


def eval_batches(images, labels, batch_size, normalize=False):
    """Unaugmented batches in order (test and validation sets)."""
    return ((to_float(images[i:i + batch_size], normalize), labels[i:i + batch_size])
            for i in range(0, len(images), batch_size))


def tensor_batches(images, labels, batch_size, seed, epoch, augment=True, normalize=False):
    """One epoch of augmented (x, y) batches from device-resident uint8 tensors, last batch
    partial (DataLoader's drop_last=False). The epoch is augmented up front in a few large
    gathers: per-step work is then one slice, because at these model sizes a training step is
    bound by kernel launches, not arithmetic."""
    g = epoch_generator(seed, epoch, images.device)
    order = torch.randperm(len(images), generator=g, device=images.device)
    if augment:
        dy, dx, flip = sample_crop_flip(len(images), g)
        epoch_images = torch.cat([crop_flip(images[idx], dy[idx], dx[idx], flip[idx])
                                  for idx in order.split(AUGMENT_CHUNK)])
    else:
        epoch_images = images[order]
    epoch_labels = labels[order]
    for start in range(0, len(images), batch_size):
        yield (to_float(epoch_images[start:start + batch_size], normalize),
               epoch_labels[start:start + batch_size])


# ---------------------------------------------------------------------------------------------
# Reference pipeline: the recipe literally (torchvision transforms, Subset, DataLoader)


class ArrayDataset(torch.utils.data.Dataset):
    """CIFAR-10 arrays served as PIL images through a torchvision transform, as
    torchvision.datasets.CIFAR10 does (which itself refuses files whose md5 is not official)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC for PIL
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def torchvision_batches(images, labels, indices, batch_size, seed, epoch, train=True,
                        num_workers=0, augment=True, normalize=False):
    """One epoch of (x, y) batches through torchvision transforms and a DataLoader; train=False
    serves the images in order, unaugmented."""
    from torchvision import transforms
    ops = []
    if train and augment:
        ops = [transforms.RandomCrop(CROP, padding=PAD), transforms.RandomHorizontalFlip()]
    ops += [transforms.ToTensor()] + ([transforms.Normalize(MEAN, STD)] if normalize else [])
    dataset = ArrayDataset(images, labels, transforms.Compose(ops))
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, indices.tolist())
    # Worker processes seed their transforms from the loader's generator; without workers the
    # transforms draw from torch's global RNG, so that is re-seeded here. Either way an epoch is a
    # function of (seed, epoch, num_workers).
    torch.manual_seed(epoch_seed(seed, epoch))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train,
                                         generator=epoch_generator(seed, epoch),
                                         num_workers=num_workers)
    yield from loader
