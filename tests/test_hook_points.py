"""Hook points: short names, suggestions for unknown names, and the one "is anything hooked" check."""

from __future__ import annotations

import re

import pytest
import torch
from hooked_tiny import no_hooks_left

from llama3_lab.hook_points import HookNameError, get_act_name, hooked_names, is_hooked

pytest_plugins = ["hooked_tiny"]  # the fixtures tiny and tokens


# ------------------------------------------------------------------------------------ short names


@pytest.mark.parametrize(
    "args, full",
    [
        (("pattern", 3), "blocks.3.attn.hook_pattern"),
        (("resid_post", 0), "blocks.0.hook_resid_post"),
        (("resid_pre", 2), "blocks.2.hook_resid_pre"),
        (("rot_k", 1), "blocks.1.attn.hook_rot_k"),
        (("pre_linear", 1), "blocks.1.mlp.hook_pre_linear"),
        (("post", 4), "blocks.4.mlp.hook_post"),
        (("mlp_out", 4), "blocks.4.hook_mlp_out"),
        (("scale", 3, "ln1"), "blocks.3.ln1.hook_scale"),
        (("normalized", 3, "ln2"), "blocks.3.ln2.hook_normalized"),
        (("scale",), "ln_final.hook_scale"),
        (("embed",), "hook_embed"),
        (("logits",), "unembed.hook_out"),
        (("blocks.0.hook_resid_post",), "blocks.0.hook_resid_post"),
    ],
)
def test_get_act_name(args, full):
    assert get_act_name(*args) == full


def test_get_act_name_asks_what_is_missing():
    with pytest.raises(ValueError, match=r"\('scale', 3, 'ln1'\)"):
        get_act_name("scale", 3)
    with pytest.raises(ValueError, match="give the layer"):
        get_act_name("pattern")
    with pytest.raises(HookNameError, match="'pattern'"):
        get_act_name("patern", 2)


def test_unknown_names_suggest_the_closest(tiny, tokens):
    with pytest.raises(HookNameError) as info:
        tiny.run_with_cache(tokens, names_filter=["blocks.2.hook_pattern"])
    assert info.value.suggestions[0] == "blocks.2.attn.hook_pattern"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "blocks.2.attn.hook_pattern" in str(info.value) and not str(info.value).startswith('"')

    with pytest.raises(HookNameError) as info:
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_rotq", lambda t, hook: None)])
    assert "blocks.1.attn.hook_rot_q" in info.value.suggestions

    with pytest.raises(HookNameError, match=re.escape("cache['pattern', layer]")):
        tiny.run_with_cache(tokens, names_filter="pattern")
    assert no_hooks_left(tiny)


# ---------------------------------------------------------------------------------- hooked or not


def test_hooked_names_see_local_and_global_hooks(tiny):
    point = tiny.hook_dict["blocks.1.hook_resid_mid"]
    assert hooked_names(tiny.hook_dict) == [] and not is_hooked(point)
    with tiny.hooks([("blocks.1.hook_resid_mid", lambda t, hook: None)]):
        assert hooked_names(tiny.hook_dict) == ["blocks.1.hook_resid_mid"] and point.has_hooks()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert hooked_names(tiny.hook_dict) == tiny.hook_names()  # a global hook sees every tensor
    finally:
        handle.remove()
    assert not is_hooked(point)
