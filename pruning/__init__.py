"""prunebench's pruning library: models, data, methods, metrics and the four steps of PruningBench.

    sparsify -> group -> prune -> finetune, then evaluate

It imports no orchestration (Prefect, MLflow, DVC, Optuna): use it alone, or through ``flows``.

Example::

    import pruning
    bundle = pruning.load_data("digits")
    model = pruning.create_model("resnet20", bundle.spec.num_classes)
    model, report = pruning.prune(model, bundle.spec.example_inputs(), method="lamp", speedup=2.0)
"""
from .checkpoint import load_checkpoint, load_weights, read_checkpoint, save_checkpoint
from .data import DataBundle, DataSpec, load_data, materialize
from .errors import PruneBenchError
from .export import export_weights
from .methods import get_method, list_methods, resolve
from .metrics import accuracy, count_macs_params, measure_latency
from .models import create_model, list_models
from .steps import SCOPES, PruneReport, check_prune_args, evaluate, finetune, group, prune, sparsify
from .recipes import FamilyRecipe, get_recipe, list_recipes, recipe_for, register_recipe
from .train import Distillation, Recipe, recalibrate_bn, seed_everything, train

__all__ = [
    "DataBundle", "DataSpec", "Distillation", "FamilyRecipe", "PruneBenchError", "PruneReport", "Recipe", "SCOPES",
    "accuracy", "check_prune_args",
    "count_macs_params", "create_model", "evaluate", "export_weights", "finetune", "get_method", "get_recipe", "group",
    "list_methods", "list_models", "list_recipes", "load_checkpoint", "load_data", "load_weights", "materialize", "measure_latency", "prune",
    "read_checkpoint", "recalibrate_bn", "recipe_for", "register_recipe", "resolve", "save_checkpoint", "seed_everything", "sparsify", "train",
]
