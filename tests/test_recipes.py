"""Recipes per family, model kwargs, distillation and BatchNorm recalibration."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning
from flows import stages
from flows.config import Params, load_params
from pruning.recipes import recipe_for
from pruning.train import Distillation, Recipe, lr_factor


# --------------------------------------------------------------------------- recipe choice and params
@pytest.mark.parametrize("model, recipe", [
    ("resnet20", "cifar_sgd"), ("vgg19", "cifar_sgd"), ("timm/resnet10t", "cifar_sgd"),
    ("timm/deit_tiny_patch16_224", "vit_adamw"), ("timm/vit_tiny_patch16_224", "vit_adamw"),
    ("timm/convnext_atto", "convnext_adamw"), ("timm/mobilenetv3_small_050", "mobile_cnn"),
    ("timm/efficientnet_b0", "mobile_cnn"), ("timm/regnetx_002", "mobile_cnn"), ("yolov8n", "yolo")])
def test_each_family_gets_its_recipe(model, recipe):
    assert recipe_for(model).name == recipe


def test_params_fill_training_values_from_the_recipe_and_keep_overrides():
    p = Params.model_validate({"model": {"name": "timm/deit_tiny_patch16_224"}, "pretrain": {"lr": 5e-4},
                               "data": {"input_size": 32}})
    vit = recipe_for("timm/deit_tiny_patch16_224")
    assert p.pretrain.optimizer == "adamw" and p.pretrain.schedule == "cosine"
    assert p.pretrain.lr == 5e-4 and p.pretrain.epochs == vit.pretrain.epochs  # one value overridden, the rest kept
    assert p.finetune.recipe() == vit.finetune
    default = Params()
    assert default.pretrain.recipe() == Recipe(epochs=20, lr=0.1) and default.finetune.recipe() == Recipe(10, 0.01)
    # the shipped params.yaml leaves training values to the recipe: the same values as the built-in defaults
    assert load_params("params.yaml").model_dump(exclude={"profiles"}) == Params().model_dump(exclude={"profiles"})
    named = Params.model_validate({"model": {"name": "resnet20", "recipe": "mobile_cnn"}})
    assert named.pretrain.schedule == "cosine" and named.family_recipe().name == "mobile_cnn"


def test_the_recipe_is_on_the_recipe_card():
    p = Params.model_validate({"model": {"name": "timm/deit_tiny_patch16_224", "kwargs": {"patch_size": 8}},
                               "data": {"input_size": 32}, "finetune": {"distill": 0.5},
                               "prune": {"recalibrate_bn": 8}})
    card = stages.recipe_card(p)
    assert card["recipe"] == "vit_adamw" and card["model_kwargs"] == "patch_size=8"
    assert "ADAMW" in card["pretrain"] and "cosine" in card["finetune"] and "warm-up" in card["pretrain"]
    assert card["distillation"].startswith("weight 0.5") and card["bn_recalibration"].startswith("8 batches")
    assert card["augmentation"] == "random crop"  # no flips for digits under the ViT recipe
    assert stages.recipe_card(Params())["distillation"] == "off"


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"recipe": "adam_fast"}}, "unknown recipe 'adam_fast'"),
    ({"model": {"name": "timm/convnext_atto", "kwargs": {"patch_sise": 4}}, "data": {"input_size": 32}},
     "patch_sise"),
    ({"model": {"kwargs": {"depth": 6}}}, "takes no model kwargs"),
    ({"finetune": {"distill": 1.5}}, "finetune.distill"),
    ({"finetune": {"optimizer": "lion"}}, "unknown optimizer 'lion'"),
])
def test_bad_recipe_input_is_one_line(overrides, message):
    with pytest.raises(pruning.PruneBenchError) as err:
        load_params("missing.yaml", overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["--model-kwargs", "patch_sise=4", "--model", "timm/deit_tiny_patch16_224", "--input-size", "32"], "patch_sise"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--distill", "-0.1"], "finetune.distill"),
    (["--model-kwargs", "patch_size"], "--model-kwargs takes key=value"),
])
def test_bad_recipe_flags_exit_2_before_any_work(cli, tmp_path, args, message):
    code, out, err = cli("prune", "--method", "l2", "--speedup", "2", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written: no data, no models, no cache


def test_model_kwargs_reach_timm():
    model = pruning.create_model("timm/deit_tiny_patch16_224", 10, 3, 32, patch_size=8)
    assert model.patch_embed.num_patches == 16  # 32 / 8 squared: tokens enough for a 32x32 input


# --------------------------------------------------------------------------- schedules
def test_learning_rate_schedules():
    step = Recipe(epochs=4, lr=1.0)
    assert [lr_factor(step, e * 10, 10) for e in range(4)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = Recipe(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=2)
    ramp = [lr_factor(cos, s, 10) for s in range(20)]
    assert ramp[0] == pytest.approx(0.05) and ramp[19] == pytest.approx(1.0)  # linear warm-up per batch
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    decay = [lr_factor(cos, s, 10) for s in range(20, 100)]
    assert decay[0] == pytest.approx(1.0) and decay[-1] < 0.01 and all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_factor(cos, 60, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = Recipe(epochs=10, lr=1.0, schedule="linear")
    assert lr_factor(lin, 0, 10) == 1.0 and lr_factor(lin, 50, 10) == pytest.approx(1 - 0.99 * 0.5)
    assert lr_factor(lin, 99, 10) == pytest.approx(0.01, abs=0.011)


def test_adamw_recipe_trains_and_clips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(96, 3, 2, 2), torch.randint(0, 3, (96,))
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    history = pruning.train(model, loader, Recipe(epochs=15, lr=0.05, weight_decay=0.01, optimizer="adamw",
                                                  schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
                                                  clip_grad=1.0))
    assert history[-1]["loss"] < history[0]["loss"]


# --------------------------------------------------------------------------- distillation
def test_distillation_loss_is_the_weighted_kl():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    logits = torch.randn(8, 3)
    hard = F.cross_entropy(logits, y)
    kd = Distillation(teacher, weight=0.3, temperature=2.0)
    with torch.no_grad():
        p_t = F.softmax(teacher(x) / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(logits / 2, 1))).sum(1).mean()
    assert kd.loss(logits, x, hard).item() == pytest.approx((0.7 * hard + 0.3 * 4 * kl).item(), rel=1e-5)
    with pytest.raises(pruning.PruneBenchError, match=r"in \[0, 1\]"):
        Distillation(teacher, weight=1.2)


def test_distillation_pulls_the_student_to_the_teacher():
    """With weight 1 on random labels, the student learns the teacher's function, not the labels."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(256, 6)
    y = torch.randint(0, 4, (256,))  # labels unrelated to the teacher
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    agree = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
        pruning.train(student, loader, Recipe(epochs=40, lr=0.01, optimizer="adamw", weight_decay=0.0),
                      distillation=Distillation(teacher, weight, 1.0) if weight else None)
        with torch.no_grad():
            agree[weight] = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agree[1.0] > 0.8 and agree[1.0] > agree[0.0] + 0.3


# --------------------------------------------------------------------------- BatchNorm recalibration
def test_recalibrate_bn_matches_the_data_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    batches = [(torch.randn(16, 3, 8, 8) * 3 + 1, torch.zeros(16)) for _ in range(3)]
    model[1].running_mean.fill_(50.0)  # stale statistics, as after pruning the layers before
    model[1].momentum = 0.3
    model.eval()
    seen = pruning.recalibrate_bn(model, batches, 3)
    assert seen == 48 and model[1].momentum == 0.3 and not model.training  # mode restored
    with torch.no_grad():
        means = torch.stack([model[0](b).mean((0, 2, 3)) for b, _ in batches]).mean(0)
    assert torch.allclose(model[1].running_mean, means, atol=1e-5)
    weights = copy.deepcopy(model[0].weight)
    assert torch.equal(weights, model[0].weight)  # weights untouched
    assert pruning.recalibrate_bn(nn.Linear(2, 2), batches, 3) == 0  # nothing to recalibrate


def test_recalibration_repairs_a_pruned_model(digits, one_thread):
    """After pruning a trained resnet20 hard, re-estimated statistics bring back accuracy lost to stale ones."""
    pruning.seed_everything(0)
    model = pruning.create_model("resnet20", 10, 3, 32)
    train = digits.loader("train", 64, shuffle=True, seed=0)
    pruning.train(model, train, Recipe(epochs=2, lr=0.1))
    pruning.prune(model, digits.spec.example_inputs(), "l1", 3.0, "global", steps=20)
    test = digits.loader("test", 256)
    stale = pruning.accuracy(model, test)
    pruning.recalibrate_bn(model, digits.loader("train", 64, shuffle=True, seed=1), 8)
    assert pruning.accuracy(model, test) > stale


def test_checkpoints_keep_the_model_kwargs(tmp_path, digits, one_thread):
    """A DeiT built with patch_size 8, pruned and saved, reloads with the same geometry and the same outputs."""
    model = pruning.create_model("timm/deit_tiny_patch16_224", 10, 3, 32, patch_size=8)
    pruning.prune(model, digits.spec.example_inputs(), "l2", 2.0, "isomorphic", steps=10)
    path = pruning.save_checkpoint(tmp_path / "p.pt", model, model_name="timm/deit_tiny_patch16_224",
                                   num_classes=10, in_chans=3, input_size=32)
    again, meta = pruning.load_checkpoint(path)
    assert meta["model_kwargs"] == {"patch_size": 8} and again.patch_embed.num_patches == 16
    x = digits.spec.example_inputs(2)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), again.eval()(x), atol=1e-5)


def test_the_isomorphic_profile_is_the_papers_recipe():
    p = load_params("params.yaml", profile="isomorphic")
    assert p.model.name == "timm/deit_tiny_patch16_224" and p.model.kwargs == {"patch_size": 8}
    assert p.prune.scope == "isomorphic" and p.finetune.distill > 0 and "taylor" in p.benchmark.methods
    assert set(p.benchmark.scopes) == {"local", "global", "protected", "isomorphic"}
    assert p.family_recipe().name == "vit_adamw"
    assert stages.attention_options(p.prune) == {"head_ratio": p.prune.head_ratio}
    assert stages.attention_options(Params().prune) == {}  # a CNN gets no attention options
