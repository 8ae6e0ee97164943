"""The layout the README's architecture section promises: data-set code in its folder, model code apart from data code."""
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "twotower"
DATA_SETS = re.compile(r"\bMIND\b|(?i:movielens|ml-100k)")  # the data sets by name, not the module path twotower.datasets.mind


def test_nothing_outside_a_data_sets_folder_names_a_data_set():
    named = [f"{path.relative_to(PACKAGE)}:{number}" for path in sorted(PACKAGE.rglob("*.py")) if "datasets" not in path.parts
             for number, line in enumerate(path.read_text().splitlines(), start=1) if DATA_SETS.search(line)]
    assert not named, f"data-set specifics outside twotower/datasets/: {named}"


def test_model_and_task_code_import_no_data_code():
    offending = [f"{path.relative_to(PACKAGE)}: {line.strip()}" for folder in ("model", "task") for path in sorted((PACKAGE / folder).rglob("*.py"))
                 for line in path.read_text().splitlines() if re.match(r"\s*(from|import) twotower\.data\b", line)]
    assert not offending, offending
