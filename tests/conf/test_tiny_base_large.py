"""model=tiny_llava_base_large: the larger tiny base for paper 1's arms (issue #20, item 4)."""

from __future__ import annotations

from tests.support.helpers import compose_config


def test_the_larger_tiny_base_differs_only_in_its_language_model():
    base, large = (compose_config([f"model={name}"]).model for name in ("tiny_llava_base", "tiny_llava_base_large"))
    assert (large.init.text.num_layers, large.init.text.hidden_size) == (8, 256)
    assert large.init.vision == base.init.vision and large.init._target_ == base.init._target_
    assert large.init_seed == base.init_seed and large.render == base.render
