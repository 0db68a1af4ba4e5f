"""CP batch slicing across megatron-core versions (the sharded scores themselves: tests/engine/test_oracle.py)."""

from __future__ import annotations

import re

import pytest
import torch

from nemo_gradalign.megatron.context_parallel import slice_for_this_cp_rank


def test_an_unknown_slicing_signature_names_the_installed_megatron_core(monkeypatch):
    import megatron.core.utils as megatron_utils
    from megatron.core import package_info

    def future_slicer(batch, is_hybrid_cp, cp_layout):  # a required argument no release has today
        raise AssertionError("must not be called")

    monkeypatch.setattr(megatron_utils, "get_batch_on_this_cp_rank", future_slicer)
    expected = (f"megatron-core {package_info.__version__}: get_batch_on_this_cp_rank"
                "(batch, is_hybrid_cp, cp_layout) is not a signature nemo_gradalign knows")
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        slice_for_this_cp_rank({"tokens": torch.zeros(1, 4, dtype=torch.long)})
