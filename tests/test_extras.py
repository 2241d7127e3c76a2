"""loraplus._extras: a missing package is named with the pip commands that install it."""

from __future__ import annotations

import pytest

from loraplus import _extras


def test_a_missing_package_names_pip_and_the_clones_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_extras.EXTRAS, "sweep", ("optuna", "no_such_module_xyz"))
    assert _extras.missing("sweep") == ["no_such_module_xyz"]
    with pytest.raises(ImportError) as caught:
        _extras.require("sweep", "loraplus sweep")
    assert str(caught.value) == (
        "loraplus sweep needs no_such_module_xyz (not installed): pip install no_such_module_xyz, "
        'or pip install -e ".[sweep]" in the loraplus clone'
    )
    monkeypatch.setitem(_extras.EXTRAS, "plots", ("no_such_module_xyz",))
    with pytest.raises(ImportError, match=r'pip install -e "\.\[train\]"'):  # plots come with train
        _extras.require("plots", "loraplus.plots")
    _extras.require("train", "loraplus train")  # installed here: no error
