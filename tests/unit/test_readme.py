"""What the README tells a user to type agrees with the code."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from vlmdata.mix import load_recipes, output_key
from vlmdata.storage import DATA_PREFIX

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_training_table_gives_every_recipe_its_output_and_image_folder():
    """The --image_folder of each mixture is what its lock will record (the recipe's
    image_folder under data/): <root>/data is wrong for the pretraining sets."""
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| `([^`]+)` \| `([^`]+)` \|$", README.read_text(), re.MULTILINE)
    table = {recipe: (data_path, image_folder) for recipe, data_path, image_folder in rows}
    recipes = load_recipes()
    assert set(table) == set(recipes)
    for recipe in recipes.values():
        assert table[recipe.id] == (output_key(recipe.id, recipe.format), posixpath.normpath(posixpath.join(DATA_PREFIX, recipe.image_folder))), recipe.id
    assert table["lcs558k_pretrain"][1] != DATA_PREFIX


def test_the_ports_and_settings_the_readme_names_are_the_codes():
    text = README.read_text()
    source = (Path(__file__).resolve().parents[2] / "plugins" / "vlmdata").joinpath
    assert '"VLMDATA_PORT"' in source("localairflow.py").read_text() and "VLMDATA_PORT" in text
    assert '"VLMDATA_DEMO_PORT"' in source("demo.py").read_text() and "VLMDATA_DEMO_PORT" in text
    assert '"AIRFLOW__API__HOST": "127.0.0.1"' in source("localairflow.py").read_text() and "ssh -L 8080:localhost:8080" in text
