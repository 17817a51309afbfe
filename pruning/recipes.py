"""Training recipes per model family: how a family is pretrained from scratch and finetuned after pruning.

A plain CIFAR recipe (SGD, lr 0.1, multistep) trains a CIFAR ResNet well and leaves a ViT or a ConvNeXt at chance, so
each family gets the recipe its own literature uses, scaled to the embedded data on a CPU:

* ``cifar_sgd``: PruningBench's CIFAR recipe (SGD momentum 0.9, wd 5e-4, multistep x0.1 at 50%/75%), for the CIFAR
  ResNets, VGG and convolutional timm models without a recipe of their own;
* ``vit_adamw``: DeiT's recipe (AdamW, linear warm-up, cosine decay, label smoothing 0.1, gradient clipping);
* ``convnext_adamw``: ConvNeXt's recipe (AdamW, warm-up, cosine decay, label smoothing);
* ``mobile_cnn``: for depthwise-separable mobile CNNs (MobileNetV3, EfficientNet, RegNet): ConvNeXt's AdamW
  settings, which train them from scratch on small data where SGD is slow to start (EfficientNet);
* ``yolo``: ultralytics' own trainer settings (SGD lr0 0.01, momentum 0.937, wd 5e-4, warm-up), recorded here; the
  ultralytics trainer applies them.

:func:`recipe_for` picks the recipe from the model's name (the first registered recipe whose patterns match, in
registration order); ``params.yaml`` can name another with ``model.recipe`` and override single values in its
``pretrain`` and ``finetune`` sections.  A recipe is registered with :func:`register_recipe`, as models and methods
are.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatch
from typing import Dict

from .errors import unknown_choice
from .train import Recipe


@dataclass(frozen=True)
class FamilyRecipe:
    """A family's pretraining and finetuning phases, the model names it applies to, and its augmentation."""
    name: str
    description: str
    pretrain: Recipe
    finetune: Recipe
    patterns: tuple = ()   # fnmatch patterns of registry model names (``timm/deit_*``)
    flip: bool = True      # horizontal flips in the training augmentation

    def phase(self, name: str, **overrides) -> Recipe:
        """The ``pretrain`` or ``finetune`` phase with the given fields replaced (``None`` keeps the recipe's)."""
        return replace(getattr(self, name), **{k: v for k, v in overrides.items() if v is not None})


_RECIPES: Dict[str, FamilyRecipe] = {}
DEFAULT_RECIPE = "cifar_sgd"


def register_recipe(recipe: FamilyRecipe) -> FamilyRecipe:
    if recipe.name in _RECIPES or recipe.name == "auto":
        raise ValueError(f"recipe {recipe.name!r} registered twice")
    _RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> FamilyRecipe:
    if name not in _RECIPES:
        raise unknown_choice("recipe", name, ["auto", *_RECIPES])
    return _RECIPES[name]


def recipe_for(model_name: str, name: str = "auto") -> FamilyRecipe:
    """The recipe ``name``, or with ``auto`` the first whose patterns match ``model_name`` (else ``cifar_sgd``)."""
    if name != "auto":
        return get_recipe(name)
    for recipe in _RECIPES.values():
        if any(fnmatch(model_name, p) for p in recipe.patterns):
            return recipe
    return _RECIPES[DEFAULT_RECIPE]


register_recipe(FamilyRecipe(
    "cifar_sgd", "PruningBench's CIFAR recipe: SGD, multistep learning rate",
    pretrain=Recipe(epochs=20, lr=0.1), finetune=Recipe(epochs=10, lr=0.01),
    patterns=("resnet*", "vgg*")))

def _adamw(epochs: int, lr: float, warmup_epochs: int, clip_grad: float) -> Recipe:
    """The AdamW phases the timm recipes share: wd 0.05, cosine decay, label smoothing 0.1."""
    return Recipe(epochs=epochs, lr=lr, weight_decay=0.05, optimizer="adamw", schedule="cosine",
                  warmup_epochs=warmup_epochs, label_smoothing=0.1, clip_grad=clip_grad)


register_recipe(FamilyRecipe(
    "vit_adamw", "DeiT's recipe: AdamW, warm-up, cosine decay, label smoothing, gradient clipping",
    pretrain=_adamw(60, 1e-3, 5, 1.0), finetune=_adamw(10, 2e-4, 1, 1.0),
    patterns=("timm/vit_*", "timm/deit*", "timm/deit3*", "timm/*_vit_*", "timm/eva*", "timm/beit*"),
    flip=False))

register_recipe(FamilyRecipe(
    "convnext_adamw", "ConvNeXt's recipe: AdamW, warm-up, cosine decay, label smoothing",
    pretrain=_adamw(30, 2e-3, 3, 5.0), finetune=_adamw(10, 4e-4, 1, 5.0),
    patterns=("timm/convnext*", "timm/convnextv2*"), flip=False))

# From scratch on digits, EfficientNet-B0 was at 46% after 20 of 30 epochs with SGD (lr 0.1, warm-up, cosine) and
# at 90% after 9 with ConvNeXt's AdamW settings, which also suit MobileNetV3 (benchmarks/family_targets.py)
register_recipe(FamilyRecipe(
    "mobile_cnn", "mobile CNNs: AdamW, warm-up, cosine decay, label smoothing (ConvNeXt's settings)",
    pretrain=_adamw(30, 2e-3, 3, 5.0), finetune=_adamw(10, 4e-4, 1, 5.0),
    patterns=("timm/mobilenet*", "timm/efficientnet*", "timm/tf_efficientnet*", "timm/regnet*",
              "timm/mnasnet*", "timm/ghostnet*", "timm/lcnet*"), flip=False))

register_recipe(FamilyRecipe(
    "yolo", "ultralytics' trainer settings: SGD lr0 0.01, momentum 0.937, wd 5e-4, warm-up, linear decay",
    pretrain=Recipe(epochs=30, lr=0.01, momentum=0.937, weight_decay=5e-4, warmup_epochs=3, schedule="linear"),
    finetune=Recipe(epochs=10, lr=0.01, momentum=0.937, weight_decay=5e-4, schedule="linear"),
    patterns=("yolov8*",)))
