"""Options that need an optional extra are refused before any work, naming the extra's install command."""
import subprocess
import sys

import pytest

from tests.conftest import CONF
from twotower import extras
from twotower.extras import MissingExtra, check_choices, choices_in


def test_every_option_that_needs_an_extra_is_a_config_file():
    for group, options in extras.NEEDS_EXTRA.items():
        for option in options:
            assert (CONF / group / f"{option}.yaml").exists(), f"{group}={option}"


def test_a_missing_module_names_the_option_and_the_extra(monkeypatch):
    monkeypatch.setitem(extras.NEEDS_EXTRA, "logger", {"tensorboard": ("no_such_module.sub", "tracking")})
    with pytest.raises(MissingExtra, match=r"logger=tensorboard needs no_such_module\.sub: pip install 'twotower\[tracking\]'"):
        check_choices({"logger": "tensorboard", "model": "default"})
    check_choices({"logger": "csv", "hydra/launcher": None})  # options that need nothing


def test_installed_extras_pass():
    check_choices({"logger": "tensorboard", "hydra/launcher": "submitit_local", "hparams_search": "ml100k_optuna"})


def test_choices_are_read_off_a_command_line():
    argv = ["-m", "hydra/launcher=submitit_slurm", "+hparams_search=ml100k_optuna", "model.output_dim=8", "logger=csv"]
    assert choices_in(argv) == {"hydra/launcher": "submitit_slurm", "hparams_search": "ml100k_optuna", "logger": "csv"}


def test_the_command_refuses_a_missing_extra_in_one_line(tmp_path):
    # As a plain install without the tracking extra sees it: the module is hidden from the import system.
    script = ("import sys, importlib.util; find = importlib.util.find_spec; "
              "importlib.util.find_spec = lambda name, *a: None if name == 'tensorboard' else find(name, *a); "
              "from twotower.cli import train_main; sys.argv = ['twotower-train', *sys.argv[1:]]; train_main()")
    done = subprocess.run([sys.executable, "-c", script, "logger=tensorboard", f"hydra.run.dir={tmp_path}"],
                          cwd=CONF.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: logger=tensorboard needs tensorboard: pip install 'twotower[tracking]'"]
    assert not (tmp_path / "checkpoints").exists()
