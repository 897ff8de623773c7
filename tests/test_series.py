"""io/series.py: the names of the files one training run writes (no I/O, so no files here either)."""

import os
import re

import pytest

from kerascharrnn.io.series import BEST, Series, name_of_record


def test_a_checkpoint_is_three_files_under_the_name():
    paths = Series("cv/ck").checkpoint(40)
    assert (paths.model, paths.state, paths.json) == ("cv/ck_40.keras", "cv/ck_40.state.npz", "cv/ck_40.json")
    assert Series("cv/ck").checkpoint(BEST).json == "cv/ck_best.json"
    assert Series("cv/ck").loss_plot == "cv/ck_loss.png" and Series("cv/ck").lock == "cv/ck.lock"


def test_the_longest_name_is_the_longest_a_run_writes():
    series = Series("cv/ck")
    longest = len(os.path.basename(series.longest_file_name))
    written = [series.checkpoint(2**31 - 1), series.checkpoint(BEST)]
    assert all(len(os.path.basename(p)) <= longest for c in written for p in (c.model, c.state, c.json))
    assert len(os.path.basename(series.loss_plot)) <= longest


@pytest.mark.parametrize("path, iteration", [("cv/ck_40.json", 40), ("/elsewhere/ck_7.json", 7),
                                             ("cv/ck_best.json", None), ("cv/ck_40.keras", None),
                                             ("cv/ck_x_40.json", None), ("cv/ckk_40.json", None)])
def test_the_iteration_of_a_record_is_read_from_its_name(path, iteration):
    assert Series("cv/ck").iteration_of_record(path) == iteration


def test_the_pattern_matches_what_the_series_writes_and_nothing_else():
    series = Series("/r/cv/ck[1]")  # regex and glob characters in the name are literal
    pattern = series.file_pattern()
    written = [*(p for tag in (1, 300, BEST) for p in vars(series.checkpoint(tag)).values()), series.loss_plot,
               series.lock]
    assert all(pattern.fullmatch(p) for p in written)
    for other in ("/r/cv/ck1_1.json", "/r/cv/ck[1]_1.txt", "/r/cv/ck[1]_x.json", "/r/cv/ck[1]_1.json.bak"):
        assert not pattern.fullmatch(other), other
    assert "[[]" in series.json_glob() and isinstance(pattern, re.Pattern)


@pytest.mark.parametrize("path, name", [("/runs/cv/ck_40.json", "/runs/cv/ck"),
                                        ("/runs/cv/ck_best.json", "/runs/cv/ck"),
                                        ("/runs/cv/my_run_2_40.json", "/runs/cv/my_run_2"),
                                        ("/runs/cv/_2.json", "/runs/cv/"), ("/runs/cv/ck.json", None),
                                        ("/runs/cv/ck_40.keras", None)])
def test_the_series_of_a_record_is_where_the_file_is_and_its_name(path, name):
    assert name_of_record(path) == name


def test_a_relative_record_names_an_absolute_series(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert name_of_record("cv/ck_3.json") == os.path.join(str(tmp_path), "cv", "ck")
