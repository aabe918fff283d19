"""Fixtures of the imbalance tests: each tiny model family with peaked attention, and a padded probe batch."""

from __future__ import annotations

import pytest
import torch
from tests.trainers.metrics.imbalance_support import BUILDERS, collate, make_instances


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    torch.manual_seed(0)
    model, processor = BUILDERS[request.param]()
    # Random init attends almost uniformly; larger queries make the attention peaked, so a mis-masked or
    # mis-mapped key changes the statistics well beyond the tolerance.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
    return request.param, model.eval(), processor


@pytest.fixture(scope="module")
def probe_batch(family, tmp_path_factory):
    name, model, processor = family
    return collate(make_instances(tmp_path_factory.mktemp("images"), 3), processor)
