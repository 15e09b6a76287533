"""The built-in trained models ``tiny-gpt2``, ``tiny-opt`` and ``tiny-mamba``: their recipe, the
training run that regenerates the shipped files (``python -m neuronbench zoo train <name>``), the
check of the shipped files (:func:`verify_builtin`), and the calibration models made from them
(:mod:`neuronbench.zoo.planted`: ``planted-gpt2``, ``planted-mamba``).
"""

from neuronbench.zoo.artifacts import builtin_dir, verify_builtin
from neuronbench.zoo.recipe import RECIPE_VERSION, RECIPES, Recipe, get_recipe, validate_recipe
from neuronbench.zoo.train import train_builtin

__all__ = [
    "RECIPES",
    "RECIPE_VERSION",
    "Recipe",
    "builtin_dir",
    "get_recipe",
    "train_builtin",
    "validate_recipe",
    "verify_builtin",
]
