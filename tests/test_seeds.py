"""automl.seeds: named streams derived from the one seed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from automl import seeds


def test_streams_are_pinned_across_processes_and_versions():
    # A changed value here changes folds, search, heads and images: bump the study and generated-image
    # key versions with it (see automl.seeds).
    assert seeds.derive(0, "folds") == 1987766666
    code = "from automl import seeds; print(seeds.derive(7, 'augment', 3, 'order'), seeds.rng(7, 'bootstrap').random())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == seeds.derive(7, "augment", 3, "order")
    assert float(out[1]) == seeds.rng(7, "bootstrap").random()


def test_names_join_with_colons_and_streams_differ():
    assert seeds.derive(1, "augment:3:order") == seeds.derive(1, "augment", 3, "order")
    assert seeds.derive(1, "augment", np.int64(3), "order") == seeds.derive(1, "augment", 3, "order")
    values = {seeds.derive(s, *names) for s in (0, 1) for names in (("split",), ("folds",), ("search",), ("head",))}
    assert len(values) == 8
    assert all(0 <= v < 2**31 for v in values)
    assert 2**40 < max(seeds.derive(0, "augment", 0, "generate", k, bits=63) for k in range(8)) < 2**63
    assert seeds.rng(0, "a").random() != seeds.rng(0, "b").random()


@pytest.mark.parametrize("bad", [1.5, True, "", None])
def test_only_strings_and_integers_name_a_stream(bad):
    with pytest.raises((TypeError, ValueError)):
        seeds.derive(0, "augment", bad)


def test_a_negative_seed_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        seeds.derive(-1, "split")
