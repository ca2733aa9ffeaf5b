"""The Examples in sp24.nn's docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest

import torch
from torch import nn

import sp24


def test_nn_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(sp24.nn, globs={"sp24": sp24, "torch": torch, "nn": nn}) if t.examples]
    names = {t.name.rsplit(".", 1)[-1] for t in tests}
    assert {"ReLU2", "ReLU2FFN", "from_linear", "set_sparse", "load_mode", "without_mode", "DenseWarmup",
            "convert"} <= names, names
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} docstring examples failed (see output)"
