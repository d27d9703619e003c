"""Stage 1: the branches get original vs augmented views, and both outputs train."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trustvision.compact.dual import AugmentedBatches, build_dual, dual_objective
from trustvision.config import AugmentConfig
from trustvision.data.augment import BatchAugment
from trustvision.data.loader import BatchLoader
from trustvision.models.compact import build_compact
from trustvision.train.loop import Accel, train_epoch


def loader(n: int = 64, *, augment: AugmentConfig | None = None) -> BatchLoader:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8)
    labels = torch.arange(n) % 3
    augment = augment or AugmentConfig(rotation=30, translate=0.2, brightness=0.2)
    return BatchLoader(
        images, labels, batch_size=16, mean=(0.5,), std=(0.25,), augment=BatchAugment(augment)
    )


def tiny_dual():
    torch.manual_seed(0)
    model = build_compact(
        stem=4, stages=((6,),), separable=(False,), num_classes=3, in_channels=1, image_size=12
    )
    return build_dual(model)


def test_pair_batches_are_originals_then_their_augmented_copies() -> None:
    base = loader()
    pairs = AugmentedBatches(base, mode="pair")
    index = torch.arange(16)
    generator = torch.Generator().manual_seed(1)

    batch = pairs.make_batch(index, generator)

    originals = (base.images[index].float() / 255 - 0.5) / 0.25
    expected_aug = base.augment(base.images[index].float() / 255, torch.Generator().manual_seed(1))
    assert batch.shape == (32, 1, 12, 12)
    assert torch.equal(batch[:16], originals)
    assert torch.allclose(batch[16:], (expected_aug - 0.5) / 0.25)
    assert not torch.allclose(batch[16:], originals)


def test_a_pixel_space_base_loader_keeps_its_pixels() -> None:
    """A base built with normalize=False (robust's attacks work on pixels) must not come back
    normalised: its model normalises its inputs itself, and would do it twice."""
    base = loader()
    pixels = BatchLoader(
        base.images, base.labels, batch_size=16, mean=(0.5,), std=(0.25,), normalize=False,
        augment=base.augment,
    )  # fmt: skip
    for mode in ("pair", "mixed"):
        batch = AugmentedBatches(pixels, mode=mode).make_batch(torch.arange(16), torch.Generator())
        assert batch.min() >= 0 and batch.max() <= 1  # normalised, it would reach -2 and 2


def test_each_branch_sees_its_own_view() -> None:
    dual = tiny_dual()
    seen: dict[str, torch.Tensor] = {}
    for name, branch in dual.branches().items():
        branch.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0]))
    x, y = next(iter(AugmentedBatches(loader(), mode="pair").epoch(0)))

    dual_objective()(dual, x, y)

    assert torch.equal(seen["original"], x[:16])
    assert torch.equal(seen["augmented"], x[16:])


def test_mixed_batches_augment_a_fraction_of_images() -> None:
    base = loader(256)
    index = torch.arange(256)
    mixed = AugmentedBatches(base, mode="mixed", prob=0.5)

    batch = mixed.make_batch(index, torch.Generator().manual_seed(3))

    originals = (base.images[index].float() / 255 - 0.5) / 0.25
    same = (batch == originals).flatten(1).all(1).float().mean().item()
    assert batch.shape == originals.shape
    assert 0.35 < same < 0.65
    never = AugmentedBatches(base, mode="mixed", prob=0.0)
    assert torch.equal(never.make_batch(index, torch.Generator().manual_seed(3)), originals)


def test_loss_is_the_weighted_sum_of_both_outputs() -> None:
    dual = tiny_dual().eval()
    x, y = next(iter(AugmentedBatches(loader(), mode="pair").epoch(0)))

    loss, logits = dual_objective(weights=(0.3, 0.7))(dual, x, y)

    lo, la = dual.original(x[:16]), dual.augmented(x[16:])
    expected = 0.3 * F.cross_entropy(lo, y) + 0.7 * F.cross_entropy(la, y)
    assert torch.allclose(loss, expected)
    assert torch.allclose(logits, (lo + la) / 2)


def test_both_branches_train_and_a_zero_weight_stops_one() -> None:
    dual = tiny_dual()
    before = {k: v.clone() for k, v in dual.state_dict().items()}
    optimizer = torch.optim.SGD(dual.parameters(), lr=0.1)
    batches = AugmentedBatches(loader(), mode="pair").epoch(0)

    train_epoch(
        dual,
        batches,
        optimizer=optimizer,
        objective=dual_objective(),
        accel=Accel(torch.device("cpu")),
    )

    for name in ("original", "augmented"):
        key = f"{name}.head.weight"
        assert not torch.equal(before[key], dual.state_dict()[key]), f"{name} head did not train"
        key = f"{name}.stem.0.weight"
        assert not torch.equal(before[key], dual.state_dict()[key]), f"{name} stem did not train"
    x, y = next(iter(AugmentedBatches(loader(), mode="pair").epoch(1)))
    dual.zero_grad()
    dual_objective(weights=(1.0, 0.0))(dual, x, y)[0].backward()
    assert all(p.grad is None or not p.grad.any() for p in dual.augmented.parameters())
    assert any(p.grad is not None and p.grad.any() for p in dual.original.parameters())


def test_branches_start_identical_but_are_separate_weights() -> None:
    dual = tiny_dual()

    for (ka, a), (_, b) in zip(
        dual.original.state_dict().items(), dual.augmented.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), ka
    assert dual.original.head.weight.data_ptr() != dual.augmented.head.weight.data_ptr()
