"""A trial's result depends on its key alone: not on other trials running beside it on threads.

Trials can share a process (Dask workers with several threads, the library used from threads; `--concurrency N`
gives each worker process its own), and threads share torch's global random state; every random draw of a trial (augmentation, the ``random`` criterion, shuffling) therefore comes from the
trial's own generators, seeded by ``params.seed``.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import pruning
from flows import stages
from flows.config import load_params

# augmentation-driven finetuning (all), the random criterion, a data-driven one (shuffled calibration batches)
# and a sparsifier pairing (augmented sparse training)
METHODS = ["random", "taylor", "l2+group_norm"]
TRAIN_IMAGES = 256
TINY = {"pretrain": {"epochs": 2}, "sparsify": {"epochs": 1}, "finetune": {"epochs": 1},
        "prune": {"steps": 10, "calibration_batches": 1}, "evaluate": {"latency_batch": 2, "latency_repeats": 1}}
RESULTS = ("acc_pruned", "acc_finetuned", "macs_pruned", "params_pruned", "sparsify_history", "finetune_history")


def augmented_batches(bundle, seed: int) -> list:
    return [x for x, _ in bundle.loader("train", 256, shuffle=True, augment=True, seed=seed)][:2]


def test_augmentation_depends_on_the_loader_seed_alone(digits):
    torch.manual_seed(1)
    first = augmented_batches(digits, seed=0)
    torch.manual_seed(2)  # another trial reseeding (or drawing from) the global generator meanwhile
    again = augmented_batches(digits, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = augmented_batches(digits, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_augmentation_differs_between_epochs(digits):
    loader = digits.loader("train", 10_000, shuffle=False, augment=True, seed=0)
    first, second = (x for x, _ in list(loader) + list(loader))
    assert not torch.equal(first, second)


def test_augmented_batches_are_crops_of_each_image_whatever_the_batch_size(digits):
    """Batches are augmented whole: every image is one of its 9 x 9 padded crops (mirrored or not), the k-th
    image of an epoch gets the same crop at any batch size, and the crops vary."""
    plain = torch.cat([x for x, _ in digits.loader("train", 64, shuffle=True, seed=0)])
    crops = [torch.cat([x for x, _ in digits.loader("train", batch, shuffle=True, augment=True, seed=0)])
             for batch in (7, 64)]
    assert torch.equal(crops[0], crops[1])
    padded = torch.nn.functional.pad(plain[:40], (4, 4, 4, 4))
    h, w = plain.shape[-2:]
    offsets = set()
    for i, image in enumerate(crops[0][:40]):
        found = [(top, left, mirrored) for top in range(9) for left in range(9) for mirrored in (False, True)
                 if torch.equal(image, (lambda c: c.flip(-1) if mirrored else c)(
                     padded[i, :, top:top + h, left:left + w]))]
        assert found, f"image {i} is not a crop of its padded original"
        offsets.update(found)
    assert len(offsets) > 10


def random_prune_widths(seed: int, global_seed: int) -> list:
    torch.manual_seed(0)
    model = pruning.create_model("resnet20", 10, 3, 32)
    torch.manual_seed(global_seed)  # what other trials leave in the global generator
    model, _ = pruning.prune(model, torch.randn(1, 3, 32, 32), "random", 2.0, steps=10, seed=seed)
    return [m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_random_criterion_depends_on_its_seed_alone():
    assert random_prune_widths(0, global_seed=1) == random_prune_widths(0, global_seed=2)
    assert random_prune_widths(0, global_seed=1) != random_prune_widths(1, global_seed=1)


# --------------------------------------------------------------------------- trials side by side
@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    work = tmp_path_factory.mktemp("concurrency")
    params = load_params(work / "none.yaml", overrides={**TINY, "data": {"prepared_dir": str(work / "data")}})
    prepared = stages.prepare(params)
    bundle = pruning.load_data(str(prepared))
    images, labels = bundle.splits["train"]
    bundle.splits["train"] = (images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES])  # fewer images: a fast trial
    pruning.materialize(bundle, prepared)
    dense = work / "dense.pt"
    stages.pretrain(params, dense)
    return params, dense, stages.evaluate_stage(params, dense), work


def run_trial(baseline, method: str, run: str) -> dict:
    params, dense, dense_metrics, work = baseline
    folder = work / run / method.replace("+", "-")
    folder.mkdir(parents=True)
    result = stages.run_trial(params, method, 2.0, "protected", dense, folder / "finetuned.pt", folder,
                              dense_metrics=dense_metrics)
    return {k: result.to_dict()[k] for k in RESULTS}


def test_trials_on_threads_give_the_sequential_results(baseline):
    # each trial uses torch's default intra-op threads, as the benchmark does: the count is process-wide, so an
    # order of float reductions that depended on the trials beside it would show here, in the loss histories
    sequential = {m: run_trial(baseline, m, "sequential") for m in METHODS}
    start = threading.Barrier(len(METHODS))  # all trials draw random numbers at the same time

    def side_by_side(method):
        start.wait()
        return run_trial(baseline, method, "threads")
    with ThreadPoolExecutor(len(METHODS)) as pool:
        threaded = dict(zip(METHODS, pool.map(side_by_side, METHODS)))
    assert threaded == sequential
    # real, different trials (their accuracies may all sit at chance after so little training; their losses differ)
    assert len({r["finetune_history"][0]["loss"] for r in sequential.values()}) == len(METHODS)
