"""The Retriever's arguments are checked before any work: each refusal names the argument and its value.

Every example here once gave a wrong answer or a bare library error (issue 15, part A).
"""
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from tests.export_fixtures import trained_and_exported
from twotower import Retriever
from twotower.artifact import MAX_ID_CHARS
from twotower.rerank import Rerank


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return Retriever.load(trained_and_exported(tmp_path_factory.getbasetemp() / "export-shared")[1])


@pytest.fixture
def fresh(retriever):
    """A retriever of its own, for tests that add items."""
    return Retriever.load(retriever.artifact.path)


def seen_ids(retriever, user):
    return set(retriever.item_ids[retriever._seen_of(retriever._user_row[user])])


def new_items(retriever, ids, **columns):
    """Rows for add_items: the content of catalogue item '0', under new ids (and any column overridden)."""
    content = retriever.items[retriever.items["item_id"] == "0"].drop(columns="item_id")
    return pd.concat([content] * len(ids), ignore_index=True).assign(item_id=ids, **columns)


def test_a_bare_string_is_not_read_as_a_list_of_one_character_ids(retriever):
    with pytest.raises(TypeError, match=r"users must be a list of ids, got str '12'; a bare string would be read as its characters"):
        retriever.recommend("12")  # was: the users '1' and '2'
    with pytest.raises(TypeError, match=r"item_ids must be a list of ids, got str '50'"):
        retriever.recommend_from_history("50")  # was: the history ['5', '0']
    with pytest.raises(TypeError, match=r"item_ids mixes lists and single ids \(item_ids\[0\] is list, item_ids\[1\] is str\)"):
        retriever.recommend_from_history([["5"], "7"])  # was: the second visitor's history ['7']
    with pytest.raises(TypeError, match=r"users\['history'\]\[0\] must be a list of ids, got str '5\|7'"):
        retriever.recommend(pd.DataFrame({"user_id": ["new"], "segment": ["S1"], "age": [30], "history": ["5|7"]}))  # was: no history
    with pytest.raises(TypeError, match=r"item_ids is set \{'0'\}; an id is a string or a number"):
        retriever.similar_items({"0"})
    with pytest.raises(TypeError, match=r"table\['item_id'\]\[0\] is list \['a', 'b'\]; an id is a string or a number"):
        retriever.add_items(new_items(retriever, [["a", "b"]]))
    with pytest.raises(TypeError, match=r"users\[1\] is bytes b'2'"):
        retriever.recommend(["1", b"2"])  # was: the unknown user "b'2'"
    # A single id stays a single id where the method documents one.
    assert retriever.similar_items("0", k=3).item_ids.tolist() == retriever.similar_items(["0"], k=3).item_ids.tolist()


@pytest.mark.parametrize("call", ["recommend", "recommend_from_history", "similar_items", "popular", "trending"])
def test_k_is_a_positive_integer(retriever, call):
    ask = {
        "recommend": lambda k: retriever.recommend(["1"], k=k),
        "recommend_from_history": lambda k: retriever.recommend_from_history(["5"], k=k),
        "similar_items": lambda k: retriever.similar_items(["0"], k=k),
        "popular": lambda k: retriever.popular(k),
        "trending": lambda k: retriever.trending(k),
    }[call]
    for k in (0, -1, -5):  # was: 0 rows, a bare faiss/numpy error, or (popular(-5)) all but 5 items
        with pytest.raises(ValueError, match=f"^k={k} must be a positive integer$"):
            ask(k)
    for k, shown in ((True, "bool True"), (2.5, "float 2.5"), ("3", "str '3'"), (None, "NoneType None")):
        with pytest.raises(TypeError, match=f"^k must be a positive integer, got {shown}$"):
            ask(k)
    assert ask(np.int64(3)).item_ids.shape == (1, 3)


def test_k_beyond_the_catalogue_returns_the_whole_catalogue(retriever):
    n = len(retriever.item_ids)
    everything = retriever.recommend(["1"], k=10 * n, exclude_seen=False)  # once: n items and 9n padding entries
    assert everything.item_ids.shape == (1, n) and set(everything.item_ids[0]) == set(retriever.item_ids)
    assert retriever.recommend(["1"], k=10 * n).item_ids.tolist() == retriever.recommend(["1"], k=n).item_ids.tolist()
    assert retriever.popular(10 * n).item_ids.shape == (1, n)
    assert retriever.similar_items(["0"], k=10 * n).item_ids.shape == (1, n)


def test_a_huge_k_runs_in_bounded_memory(retriever):
    """Under an address-space limit 512 MB above what loading took, k=10**9 still answers (it once allocated (U, k) arrays: 8 GB)."""
    script = textwrap.dedent(f"""
        import resource
        from twotower import Retriever
        retriever = Retriever.load({str(retriever.artifact.path)!r})
        with open("/proc/self/statm") as statm:
            in_use = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (in_use + (512 << 20), resource.RLIM_INFINITY))
        shapes = [retriever.recommend(["1"], k=10**9).item_ids.shape, retriever.recommend_from_history(["5"], k=10**9).item_ids.shape,
                  retriever.similar_items(["0"], k=10**9).item_ids.shape, retriever.popular(10**9).item_ids.shape]
        print(shapes)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    n = len(retriever.item_ids)
    assert done.stdout.strip() == str([(1, n)] * 4)


def test_number_knobs_must_be_finite_and_in_range(retriever):
    for half_life in (float("nan"), float("inf"), 0, -1.0):  # NaN once gave NaN scores
        with pytest.raises(ValueError, match=f"^half_life={half_life} must be a finite number > 0$"):
            retriever.trending(5, half_life=half_life)
    with pytest.raises(TypeError, match="^half_life must be a positive number, got str '7'$"):
        retriever.trending(5, half_life="7")
    for trade_off in (float("nan"), 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"rerank trade_off=.* must be a number in \[0, 1\]"):
            Rerank("mmr", fetch=50, trade_off=trade_off)
    for fetch in (0, 2.5, True, "50"):
        with pytest.raises(ValueError, match=r"rerank fetch=.* must be a positive integer"):
            Rerank("mmr", fetch=fetch)
    with pytest.raises(ValueError, match=r"rerank.fetch=5 must be at least k=10"):
        retriever.recommend(["1"], k=10, rerank=Rerank("mmr", fetch=5))  # once: 5 items padded to 10
    with pytest.raises(TypeError, match=r"rerank must be a twotower.rerank.Rerank or None, got str 'mmr'"):
        retriever.recommend(["1"], rerank="mmr")
    with pytest.raises(TypeError, match=r"exclude_seen must be True or False, got str 'no'"):
        retriever.recommend(["1"], exclude_seen="no")  # once: truthy, so seen items were dropped after all


def test_raw_rows_with_float_user_ids_are_recognised_and_missing_ids_match_nobody(retriever):
    profile = {"segment": ["S1", "S1"], "age": [30, 30]}
    got = retriever.recommend(pd.DataFrame({"user_id": [1.0, None], **profile}), k=10)
    by_key = retriever.recommend(pd.DataFrame({"user_id": ["1", "nobody"], **profile}), k=10)
    assert not set(got.item_ids[0]) & seen_ids(retriever, "1")  # 1.0 is user '1': its seen items stay out (they came back before)
    assert got.item_ids.tolist() == by_key.item_ids.tolist()  # and None is an unknown user, as 'nobody' is
    # Id lists: numbers are ids as the vocabulary keyed them, a missing id is unknown, never the user "None" or "nan".
    assert retriever.recommend([1.0, np.int64(2)], k=5).item_ids.tolist() == retriever.recommend(["1", "2"], k=5).item_ids.tolist()
    for missing in (None, float("nan"), pd.NA):
        with pytest.raises(KeyError, match=r"users: unknown user id\(s\) \[None\]"):
            retriever.recommend(["1", missing])
    with pytest.raises(KeyError, match=r"item_ids: unknown item id\(s\) \['nope'\]"):
        retriever.similar_items(["0", "nope"])


def test_nan_and_inf_in_numeric_columns_are_refused_naming_the_argument_column_and_row(retriever):
    rows = pd.DataFrame({"user_id": ["a", "b"], "segment": ["S1", "S1"], "age": [30.0, float("nan")]})
    with pytest.raises(ValueError, match=r"^users: numeric column 'age' has 1 missing/NaN value\(s\), first at row 1 \(set missing: mean or zero"):
        retriever.recommend(rows)  # 'age' has missing: error; mean or zero would fill it, as in training
    with pytest.raises(ValueError, match=r"^users: numeric column 'age' has an infinite value inf at row 1"):
        retriever.recommend(rows.assign(age=[30.0, float("inf")]))
    for price, message in ((float("nan"), "1 missing/NaN value"), (float("inf"), "an infinite value inf at row 1")):
        with pytest.raises(ValueError, match=f"^new items table: numeric column 'price' has {message}"):
            retriever.add_items(new_items(retriever, ["n1", "n2"], price=[3.0, price]))


def test_ids_have_a_length_limit_and_one_long_id_does_not_widen_the_catalogue(fresh):
    n = len(fresh.item_ids)
    with pytest.raises(ValueError, match=rf"table\['item_id'\]\[0\] is an id of 200000 characters; ids have at most {MAX_ID_CHARS}"):
        fresh.add_items(new_items(fresh, ["x" * 200_000]))  # once: every id widened to 200,000 characters (1.35 GB at 1,700 items)
    with pytest.raises(ValueError, match=rf"users\[0\] is an id of 300 characters; ids have at most {MAX_ID_CHARS}"):
        fresh.recommend(["u" * 300])
    before = fresh.item_ids.nbytes
    longest = "y" * MAX_ID_CHARS
    fresh.add_items(new_items(fresh, [longest]))
    assert fresh.item_ids.nbytes <= before + 16, f"{fresh.item_ids.nbytes} bytes after adding one id, {before} before"  # a pointer more, not n x 1 KB
    assert fresh.similar_items([longest], k=1).item_ids[0, 0] == "0" and fresh.item_ids[n] == longest


def test_add_items_needs_an_id_on_every_row(fresh):
    with pytest.raises(ValueError, match=r"new items table: column 'item_id' is missing at row\(s\) \[1\]; a new item needs an id"):
        fresh.add_items(new_items(fresh, ["n1", None]))  # once: the item 'None'
    assert fresh.add_items(new_items(fresh, [1000.0])).tolist() == ["1000"]  # keyed as the vocabularies key ids
    assert fresh.similar_items([1000], k=1).item_ids[0, 0] == "0"


def test_an_empty_item_id_is_not_added(fresh):
    """add_items(item_id='') put an item in the index whose id is serving's padding: answers holding it looked short."""
    with pytest.raises(ValueError, match=r"new items table: column 'item_id' has an empty id '' at row\(s\) \[1\]"):
        fresh.add_items(new_items(fresh, ["new-a", ""]))
    assert len(fresh.item_ids) == fresh.index.ntotal == len(fresh.items)
