"""Lightning's EarlyStopping, with the configured patience on a resumed run too."""
from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import EarlyStopping as LightningEarlyStopping


class EarlyStopping(LightningEarlyStopping):
    """``pytorch_lightning.callbacks.EarlyStopping`` whose ``patience`` is the configured one after a resume.

    Lightning restores the checkpoint's patience along with its wait count and best score, so a resumed run
    given ``callbacks.early_stopping.patience=20`` (callbacks may change on resume) kept the first run's.
    The wait count and best score still come back: the epochs without improvement so far count.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
