"""The LightningModule: in-batch softmax training and full-catalogue evaluation."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from twotower.constraints import ABOVE_0, AT_LEAST_0, AT_LEAST_1
from twotower.data.store import Batch, EvalBatch
from twotower.distributed import gather_remote_candidates, world
from twotower.model.two_tower import TwoTower
from twotower.optim import build_optimizer
from twotower.task.beyond_accuracy import BeyondAccuracyMetrics, beyond_accuracy_for_split
from twotower.task.impression_metrics import ImpressionMetrics
from twotower.task.losses import Columns, RetrievalLoss, RowNegatives
from twotower.task.metrics import RetrievalMetrics
from twotower.task.popularity_prior import PopularityPrior, with_column
from twotower.task.retrieval import RANK_CHUNK, RetrievalTask, Scratch, encode_catalogue, rank


class TwoTowerModule(pl.LightningModule):
    """Trains a ``TwoTower`` and evaluates it by ranking the whole catalogue for each user.

    Args:
        model: the towers.
        optimizer: ``partial(torch.optim.X, lr=...)``, called with the parameters.
        temperature: softmax temperature (initial value when ``learn_temperature``).
        learn_temperature: learn the temperature (kept at or above ``min_temperature``).
        logq_weight: weight of the logQ sampling-bias correction (0 = none).
        mask_accidental_hits: a candidate equal to the row's positive is not its negative.
        mask_same_user: another positive of the same user in the batch is not its negative.
        cross_device_negatives: under DDP, every query also sees the other ranks' candidates
            (B x world_size per softmax, masking and logQ applied globally); no effect on one process.
        ks: metric cut-offs; metrics are logged as ``val/recall@20`` etc.
        lr_schedule: ``constant`` or ``cosine`` (per step, to 0 at the end of training).
        warmup_steps: linear learning-rate warm-up steps.
        catalogue_chunk: items encoded at once when encoding the catalogue.
        rank_chunk: score-matrix entries (users x items) computed at once when evaluation ranks the
            catalogue; bounds its memory (2**25 float32 = 128 MiB, e.g. 33 users x 1M items), whatever the
            evaluation batch size. See ``twotower.task.retrieval.rank``.
        beyond_accuracy_ks: cut-offs of coverage, diversity, novelty, ... (``twotower.task.beyond_accuracy``),
            logged as ``val/coverage@20`` etc.; empty = not computed.
        table_optimizer: ``partial(twotower.optim.RowWiseAdagrad, lr=...)`` or ``partial(torch.optim.SparseAdam, ...)``:
            embedding tables get sparse gradients and this optimizer, the rest ``optimizer``
            (None: ``optimizer`` trains everything). See ``twotower.optim``.
        compile: ``torch.compile`` each tower (kernels fused; the first steps pay the compilation).
        progress_bar_loss: show each step's loss in the progress bar. Lightning turns every
            ``prog_bar`` value into a Python float after every step: one host-device sync per
            step, which stalls a GPU. False: the loss still goes to the loggers and the epoch mean.
        popularity_prior_weights: candidate weights of the popularity prior blended into the scores
            (``twotower.task.popularity_prior``); each validation ranks with every one and keeps the one
            with the best ``monitor`` (logged as ``val/popularity_prior``, stored in checkpoints, exported).
            ``[0.0]``: no prior.
        popularity_prior_signal: known interactions at which a user's prior weight is halved (None: the same for all).
        popularity_prior_half_life_days: the prior counts interactions halved every this many days before
            the known log's end (None: plain counts).
        monitor, monitor_mode: the metric (``val/recall@20``) the prior's weight is chosen by, and whether higher is better.
    """

    def __init__(
        self,
        model: TwoTower,
        optimizer: Callable[..., torch.optim.Optimizer],
        temperature: Annotated[float, ABOVE_0] = 0.05,
        learn_temperature: bool = False,
        min_temperature: Annotated[float, ABOVE_0] = 0.01,
        logq_weight: Annotated[float, AT_LEAST_0] = 1.0,
        mask_accidental_hits: bool = True,
        mask_same_user: bool = True,
        cross_device_negatives: bool = True,
        ks: Sequence[Annotated[int, AT_LEAST_1]] = (10, 20, 50, 100),
        lr_schedule: Literal["constant", "cosine"] = "constant",
        warmup_steps: Annotated[int, AT_LEAST_0] = 0,
        catalogue_chunk: Annotated[int, AT_LEAST_1] = 65536,
        rank_chunk: Annotated[int, AT_LEAST_1] = RANK_CHUNK,
        beyond_accuracy_ks: Sequence[Annotated[int, AT_LEAST_1]] = (10, 20),
        table_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        compile: bool = False,
        progress_bar_loss: bool = True,
        popularity_prior_weights: Sequence[Annotated[float, AT_LEAST_0]] = (0.0,),
        popularity_prior_signal: Annotated[float, ABOVE_0] | None = None,
        popularity_prior_half_life_days: Annotated[float, ABOVE_0] | None = None,
        monitor: str = "val/recall@20",
        monitor_mode: Literal["min", "max"] = "max",
    ):
        super().__init__()
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule '{lr_schedule}' is not one of constant, cosine")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive")
        if learn_temperature and temperature < min_temperature:
            # Below the floor the clamp passes no gradient: the temperature would stay at min_temperature for good.
            raise ValueError(f"temperature={temperature} is below min_temperature={min_temperature}: a learned temperature starts at or "
                             "above its floor (lower loss.min_temperature, or raise loss.temperature)")
        self.save_hyperparameters(ignore=["model", "optimizer", "table_optimizer"])
        self.model, self.optimizer_factory, self.table_optimizer_factory = model, optimizer, table_optimizer
        if compile:
            # In place (nn.Module.compile), so parameter names and checkpoints are unchanged.
            model.query_tower.compile()
            model.candidate_tower.compile()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        self.task = RetrievalTask(RetrievalLoss(logq_weight, mask_accidental_hits, mask_same_user), ks)
        self._catalogue: torch.Tensor | None = None
        self._scores: Scratch | None = None
        # Built from the datamodule's split when an evaluation starts (they need its popularity and activity).
        self._beyond: dict[str, BeyondAccuracyMetrics] = {}
        # The resolved run config, stored in checkpoints so export can rebuild data and towers.
        self.run_config: dict[str, Any] | None = None
        # The W&B run that tracks training (id, project), when one does: export logs its artifact into it.
        self.wandb_run: dict[str, str] | None = None
        self.checkpoint_epoch: int | None = None  # set when weights are restored from a checkpoint
        if not popularity_prior_weights:
            raise ValueError("popularity_prior_weights is empty: give [0.0] for no prior")
        shaping = {"popularity_prior_signal": popularity_prior_signal, "popularity_prior_half_life_days": popularity_prior_half_life_days}
        for name, value in shaping.items():
            if value is not None and not any(w > 0 for w in popularity_prior_weights):  # no validation would blend it in
                raise ValueError(f"{name}={value} shapes the popularity prior, but popularity_prior_weights={list(popularity_prior_weights)} "
                                 "has no weight above 0: add one (module.popularity_prior_weights=[0.0,0.5])")
        self.prior_candidates = [PopularityPrior(float(w), popularity_prior_signal, popularity_prior_half_life_days) for w in popularity_prior_weights]
        self.popularity_prior = self.prior_candidates[0]  # validation keeps the best candidate; checkpoints store it
        self._evaluations: list[_Evaluation] = []

    @property
    def temperature(self) -> torch.Tensor:
        # The floor keeps a learned temperature from collapsing; a fixed one is what was given.
        if not self.hparams.learn_temperature:
            return self.log_temperature.exp()
        return self.log_temperature.exp().clamp(min=self.hparams.min_temperature)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Everything export needs besides the weights: tower config, fitted features, run config, the tracking run."""
        checkpoint["twotower"] = {
            "model_config": self.model.config,
            "preprocessor": self.trainer.datamodule.prepared.preprocessor.to_json(),
            "run_config": self.run_config,
            "wandb_run": self.wandb_run,
            "popularity_prior": self.popularity_prior.to_json(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The epoch the restored weights finished (counting from 1): train.py names it in its closing summary.
        self.checkpoint_epoch = checkpoint["epoch"] + 1
        stored = checkpoint.get("twotower", {}).get("popularity_prior")
        if stored is not None:
            self.popularity_prior = PopularityPrior.from_json(stored)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        query = self.model.encode_query(batch.query)  # (B, D)
        candidate = self.model.encode_candidate(batch.candidate)  # (B, D)
        columns = Columns(candidate, batch.candidate_ids, batch.log_q, batch.query_ids) + self._extra_negatives(batch, candidate)
        row_negatives = None
        if batch.row_negatives is not None:
            flat = {name: x.flatten(0, 1) for name, x in batch.row_negatives.items()}
            vectors = self.model.encode_candidate(flat).view(len(batch), -1, candidate.shape[-1])  # (B, M, D)
            row_negatives = RowNegatives(vectors, batch.row_negatives_mask, batch.row_negatives_log_q)
        loss = self.task.loss(query, columns, self.temperature, batch.known_items, row_negatives)  # logits (B, B + N + M); diagonal = positives
        self.log("train/loss", loss, prog_bar=self.hparams.progress_bar_loss, on_step=True, on_epoch=True, batch_size=len(batch))
        if self.hparams.learn_temperature:
            self.log("train/temperature", self.temperature, on_step=False, on_epoch=True, batch_size=len(batch))
        return loss

    def _extra_negatives(self, batch: Batch, candidate: torch.Tensor) -> Columns:
        """Columns beyond the local batch: other ranks' candidates (DDP) and sampled corpus items (nobody's positive: user -1)."""
        none = batch.candidate_ids[:0]
        extra = Columns(candidate[:0], none, batch.log_q[:0], none)
        if self.hparams.cross_device_negatives and world()[1] > 1:
            remote = gather_remote_candidates(candidate, batch.candidate_ids, batch.log_q, batch.query_ids)  # (N = (W-1)B, D)
            extra = extra + Columns(remote.vectors, remote.ids, remote.log_q, remote.query_ids)
        if batch.negatives is not None:
            sampled = self.model.encode_candidate(batch.negatives)  # (S, D)
            extra = extra + Columns(sampled, batch.negative_ids, batch.negative_log_q, torch.full_like(batch.negative_ids, -1))
        return extra

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self, self.optimizer_factory, self.table_optimizer_factory)
        if self.hparams.lr_schedule == "constant" and not self.hparams.warmup_steps:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.hparams.warmup_steps
        cosine = self.hparams.lr_schedule == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ full-catalogue evaluation
    @property
    def catalogue_vectors(self) -> torch.Tensor | None:
        """(n_items, D) item vectors of the evaluation under way (None outside one)."""
        return self._catalogue

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def _start_evaluation(self, split: str) -> None:
        self._catalogue = encode_catalogue(self.model.encode_candidate, self.trainer.datamodule.catalogue(self.hparams.catalogue_chunk))
        self._scores = Scratch()  # rank's score buffer, kept from batch to batch of this evaluation
        if self.hparams.beyond_accuracy_ks and split not in self._beyond:
            self._beyond[split] = beyond_accuracy_for_split(self.trainer.datamodule, split, self.hparams.beyond_accuracy_ks).to(self.device)
        # Validation ranks with every candidate prior (the first with the task's own metrics), testing with the one kept.
        priors = self.prior_candidates if split == "val" else [self.popularity_prior]
        popularity = self.item_popularity(split) if any(p.active for p in priors) else None  # (n_items,) z
        self._evaluations = []
        for n, prior in enumerate(priors):
            catalogue = with_column(self._catalogue, popularity) if prior.active else self._catalogue  # (n_items, D [+ 1])
            metrics = (self.task.metrics[split], self.task.impression_metrics[split], self._beyond.get(split))
            if n:  # the other candidates rank into fresh copies
                metrics = tuple(copy.deepcopy(m) for m in metrics)
            self._evaluations.append(_Evaluation(prior, catalogue, *metrics))

    def setup(self, stage: str) -> None:
        if any(p.active for p in self.prior_candidates):
            self.item_popularity("val")  # a prior the data cannot give is refused before any training, not after an epoch

    def item_popularity(self, split: str) -> torch.Tensor:
        """(n_items,) the prior's ``z`` from the interactions known before ``split`` (a source that keeps no times: the training ones)."""
        data, prior = self.trainer.datamodule.data, self.prior_candidates[0]
        if data.known_events is not None:
            counts = prior.counts(*data.known_events[split], len(data.item_rows))
        elif prior.half_life_days is None:
            counts = data.item_counts.double().cpu().numpy()
        else:
            raise ValueError(f"popularity_prior_half_life_days={prior.half_life_days} weighs interactions by their age, and this source keeps "
                             "no interaction times: set it to null (plain counts)")
        return torch.from_numpy(PopularityPrior.item_scores(counts)[0]).to(self.device)

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: EvalBatch, split: str) -> None:
        vectors = self.model.encode_query(batch.query)  # (U, D)
        k = max(self.task.metrics[split].ks + list(self.hparams.beyond_accuracy_ks))
        impression_vectors = None
        if batch.impressions is not None:
            impression_vectors = vectors if batch.impression_query is None else self.model.encode_query(batch.impression_query)  # (U or I, D)
        known = self.trainer.datamodule.data.known[split]
        for evaluation in self._evaluations:
            query = vectors
            if evaluation.prior.active:  # [q, w(u)]: the prior's column, weighted by what is known of each user
                query = with_column(vectors, evaluation.prior.user_weights(known.row_lengths(batch.users)))
            top = rank(query, evaluation.catalogue, k, batch.exclude, batch.candidates, self.hparams.rank_chunk, self._scores).indices  # (U, k)
            evaluation.metrics.update(top, batch.targets, evaluation.catalogue.shape[0])
            if evaluation.beyond is not None:
                evaluation.beyond.update(top, batch.targets, batch.users, evaluation.catalogue.shape[0], batch.candidates)
            if batch.impressions is not None:
                position, item, impression, label = batch.impressions
                shown_to = impression_vectors
                if evaluation.prior.active:
                    users = batch.users if batch.impression_users is None else batch.impression_users
                    shown_to = with_column(impression_vectors, evaluation.prior.user_weights(known.row_lengths(users)))
                scores = (shown_to[position] * evaluation.catalogue[item]).sum(-1)  # (n,) one per shown item
                evaluation.impression_metrics.update(scores, label, impression)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        results = [evaluation.compute() for evaluation in self._evaluations]
        values = results[0]
        if len(results) > 1:
            name = self.hparams.monitor.removeprefix(f"{split}/")
            if name not in values:
                raise ValueError(f"monitor '{self.hparams.monitor}' is not a {split} metric ({', '.join(sorted(values))}): the popularity prior's "
                                 "weight cannot be chosen by it")
            sign = 1.0 if self.hparams.monitor_mode == "max" else -1.0
            best = max(range(len(results)), key=lambda n: (sign * float(results[n][name]), -n))  # ties: the earlier candidate
            self.popularity_prior, values = self._evaluations[best].prior, results[best]
        if len(self.prior_candidates) > 1 or self.popularity_prior.active:  # the weight in use, where there is one to tell
            values["popularity_prior"] = torch.tensor(self.popularity_prior.weight)
        self._catalogue = self._scores = None
        self._evaluations = []
        for name, value in values.items():
            # The values are computed over every rank already (torchmetrics syncs); sync_dist averages equal values and tells Lightning so.
            self.log(f"{split}/{name}", value, prog_bar=name in ("recall@20", "ndcg@10", "impression_auc"), sync_dist=True)


class _Evaluation:
    """One ranking of an evaluation: the prior it blends in, the catalogue's vectors (with the prior's column) and its metrics."""

    def __init__(self, prior: PopularityPrior, catalogue: torch.Tensor, metrics: RetrievalMetrics, impression_metrics: ImpressionMetrics,
                 beyond: BeyondAccuracyMetrics | None):
        self.prior, self.catalogue, self.metrics, self.impression_metrics, self.beyond = prior, catalogue, metrics, impression_metrics, beyond

    def compute(self) -> dict[str, torch.Tensor]:
        """Every metric of the ranking (reduced across processes), then reset."""
        values = self.metrics.compute()
        self.metrics.reset()
        if self.beyond is not None:
            values.update(self.beyond.compute())
            self.beyond.reset()
        if self.impression_metrics.update_called:
            values.update(self.impression_metrics.compute())
            self.impression_metrics.reset()
        return values
