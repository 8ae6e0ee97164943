"""What twotower is measured against: the same model written by hand, trained two other ways.

* ``raw_loop``: a plain PyTorch loop, batches gathered from device tensors, no framework: the
  fastest honest way to train this model, and the yardstick of every ratio.
* ``naive_lightning``: what a first Lightning build looks like: a per-sample ``Dataset``, the
  default collate and ``DataLoader`` workers, the same model and loss.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class PlainTower(nn.Module):
    """Id/categorical embeddings (+ a mean-pooled multi-hot bag) -> Linear-GELU-Linear -> unit vector."""

    def __init__(self, cardinalities: Sequence[int], bag_cardinality: int = 0, dim: int = 64, hidden: int = 256, out: int = 64):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        self.bag = nn.EmbeddingBag(bag_cardinality, dim, mode="mean", padding_idx=0) if bag_cardinality else None
        width = dim * (len(self.tables) + (self.bag is not None))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))
        for table in [*self.tables, *([self.bag] if self.bag is not None else [])]:
            nn.init.normal_(table.weight, std=0.05)

    def forward(self, ids: Sequence[torch.Tensor], bag: torch.Tensor | None = None) -> torch.Tensor:
        parts = [table(x) for table, x in zip(self.tables, ids)]  # each (B, dim)
        if self.bag is not None:
            parts.append(self.bag(bag))
        return F.normalize(self.mlp(torch.cat(parts, -1)), dim=-1)  # (B, out)


class PlainTwoTower(nn.Module):
    def __init__(self, user_cardinalities: Sequence[int], item_cardinalities: Sequence[int], genre_cardinality: int, dim: int = 64, hidden: int = 256, out: int = 64):
        super().__init__()
        self.query = PlainTower(user_cardinalities, 0, dim, hidden, out)
        self.candidate = PlainTower(item_cardinalities, genre_cardinality, dim, hidden, out)


def softmax_loss(q: torch.Tensor, c: torch.Tensor, temperature: float, log_q: torch.Tensor, item_ids: torch.Tensor, user_ids: torch.Tensor) -> torch.Tensor:
    """In-batch softmax with logQ correction, accidental-hit and same-user masking, written out."""
    logits = ((q / temperature) @ c.T).float() - log_q.unsqueeze(0)  # (B, B); diagonal = positives
    excluded = (item_ids.unsqueeze(1) == item_ids.unsqueeze(0)) | (user_ids.unsqueeze(1) == user_ids.unsqueeze(0))
    excluded.fill_diagonal_(False)
    return F.cross_entropy(logits.masked_fill(excluded, float("-inf")), torch.arange(len(q), device=q.device))


class DeviceData:
    """The benchmark's columns as device tensors: what the raw loop gathers batches from."""

    def __init__(self, user_ids, segment, country, item_ids, category, genres, pairs, log_q):
        self.user_ids, self.segment, self.country = user_ids, segment, country
        self.item_ids, self.category, self.genres = item_ids, category, genres
        self.pairs, self.log_q = pairs, log_q  # (n, 2) user row, item row; (n_items,)

    def batch(self, rows: torch.Tensor):
        users, items = self.pairs[rows].unbind(1)
        return users, items, [self.user_ids[users], self.segment[users], self.country[users]], [self.item_ids[items], self.category[items]], self.genres[items], self.log_q[items]


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall and process CPU seconds between ``start`` and ``stop``, waiting for the device at both.

    CPU seconds of a single-threaded run count the work done, whatever else the machine runs,
    so on a shared CPU they compare two paths more fairly than wall time.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.wall = self.cpu = float("nan")

    def start(self) -> None:
        _sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Clock:
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        return self


def raw_loop(data: DeviceData, model: PlainTwoTower, optimizer: torch.optim.Optimizer, batch_size: int, warmup: int, steps: int,
             device: torch.device, bf16: bool = False, compile: bool = False, temperature: float = 0.05) -> Clock:
    """The time of ``steps`` steps of a plain training loop, after ``warmup`` untimed ones."""

    def step(rows: torch.Tensor) -> torch.Tensor:
        users, items, user_x, item_x, genres, log_q = data.batch(rows)
        with _autocast(device, bf16):
            q = model.query(user_x)
            c = model.candidate(item_x, genres)
            loss = softmax_loss(q, c, temperature, log_q, items, users)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    run = torch.compile(step) if compile else step
    n = len(data.pairs)
    per_epoch = n // batch_size
    order = torch.randperm(n, device=device)
    clock = Clock(device)
    for s in range(warmup + steps):
        if s == warmup:
            clock.start()
        k = s % per_epoch
        if k == 0 and s:
            order = torch.randperm(n, device=device)
        run(order[k * batch_size : (k + 1) * batch_size])
    return clock.stop()


@torch.no_grad()
def raw_evaluation(data: DeviceData, model: PlainTwoTower, users: torch.Tensor, batch_size: int, k: int, device: torch.device, bf16: bool = False) -> float:
    """Users/s of exact top-k over the whole catalogue: encode it, then matmul + topk per user chunk."""
    _sync(device)
    start = time.perf_counter()
    with _autocast(device, bf16):
        items = torch.arange(len(data.item_ids), device=device)
        catalogue = torch.cat([model.candidate([data.item_ids[r], data.category[r]], data.genres[r]) for r in items.split(65536)])
        for chunk in users.split(batch_size):
            q = model.query([data.user_ids[chunk], data.segment[chunk], data.country[chunk]])
            (q @ catalogue.T).topk(k, dim=1)
    _sync(device)
    return len(users) / (time.perf_counter() - start)


class PerSampleDataset(Dataset):
    """One (user, item) pair per ``__getitem__``, features looked up row by row: the naive build."""

    def __init__(self, data: DeviceData):
        cpu = {name: getattr(data, name).cpu().numpy() for name in ("user_ids", "segment", "country", "item_ids", "category", "genres", "pairs", "log_q")}
        self.__dict__.update(cpu)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        user, item = self.pairs[i]
        return {
            "user": user, "item": item,
            "user_x": np.array([self.user_ids[user], self.segment[user], self.country[user]]),
            "item_x": np.array([self.item_ids[item], self.category[item]]),
            "genres": self.genres[item],
            "log_q": self.log_q[item],
        }


class NaiveModule(pl.LightningModule):
    def __init__(self, model: PlainTwoTower, lr: float, temperature: float = 0.05):
        super().__init__()
        self.model, self.lr, self.temperature = model, lr, temperature

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        q = self.model.query(batch["user_x"].unbind(1))
        c = self.model.candidate(batch["item_x"].unbind(1), batch["genres"])
        loss = softmax_loss(q, c, self.temperature, batch["log_q"], batch["item"], batch["user"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def naive_loader(data: DeviceData, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(PerSampleDataset(data), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0)
