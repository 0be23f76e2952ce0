"""packaged: the decode step compiled ahead of time, used by default only where it is right.

One AOTInductor build of a tiny model (~15 s, a quick compile without max-autotune) serves the module.
"""

from __future__ import annotations

import gc
import json
import weakref
import zipfile
from dataclasses import asdict, replace

import pytest
import torch
from conftest import tiny_model

from llama3_lab import fast, packaged
from llama3_lab.fast import FastDecoder
from llama3_lab.generation import generate_tokens
from llama3_lab.packaged import PackageError, build_package, record_of, usable_package
from llama3_lab.session import Session

PROMPT = [1, 5, 9, 3, 7]
QUICK = packaged.QUICK_CONFIGS  # the frozen-weights compile without max-autotune: same code path, faster


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3-lab-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMA3_LAB_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def built(home):
    model = tiny_model(seed=3)
    olders = [_older_build(model, home), _older_build(model, home, older_format=True)]
    said: list[str] = []
    path = build_package(model, capacity=64, inductor_configs=QUICK, echo=said.append)
    for older in olders:
        assert not older.exists() and not older.with_suffix(".json").exists()  # superseded, removed
        assert any("removed an older build" in line and older.name in line for line in said), said
    return model, path


def _older_build(model, home, older_format=False):
    """A package for the same target compiled another way (another compiler key), as an earlier
    version of ``llama3-lab compile`` would have left it."""
    fingerprint = packaged.weights_fingerprint(model)
    record = replace(packaged._record_for(model, 1, 64, fingerprint), compiler="an-older-way")
    if older_format:  # the same way, in the format before this one
        record = replace(
            record, compiler=packaged._compiler_key(QUICK, torch.float32), format=packaged.FORMAT - 1
        )
    path = packaged.package_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"an older build")
    path.with_suffix(".json").write_text(json.dumps(asdict(record)))
    return path


def decoder_in_use(model):
    return fast._DECODERS.get(model)


def test_the_package_is_recorded_and_found(built, home):
    model, path = built
    assert path.parent == home / "compiled" and path.exists()
    record = record_of(path)
    assert (record.capacity, record.batch_size, record.dtype) == (64, 1, "float32")
    assert record.weights == packaged.weights_fingerprint(model)
    assert usable_package(model, 40) == path
    assert usable_package(model, 65) is None  # more positions than the package holds
    # built again: the same file is kept, nothing recompiled
    assert build_package(model, capacity=64, inductor_configs=QUICK, echo=None) == path


def test_a_float32_package_keeps_projection_and_residual_add_apart(built):
    """Freezing would fuse o_proj/down_proj with the residual add into oneDNN's linear+add, 1.38x slower
    per step (measured); the package is built without that fusion, and with the attention products as
    reductions (no batched matmul call: 1.08x the compiled step, measured)."""
    _model, path = built
    with zipfile.ZipFile(path) as package:
        wrappers = [name for name in package.namelist() if name.endswith(".wrapper.cpp")]
        code = package.read(wrappers[0]).decode()
    assert "_linear_pointwise_binary" not in code
    assert "bmm" not in code  # the attention products are reductions (DecodeStep(reductions=True))
    assert record_of(path).compiler == packaged._compiler_key(QUICK, torch.float32)


def test_generate_uses_the_package_by_default_with_the_eager_tokens(built):
    model, path = built
    eager = list(generate_tokens(model, PROMPT, 24, temperature=0, fast=False))
    assert list(generate_tokens(model, PROMPT, 24, temperature=0)) == eager
    decoder = decoder_in_use(model)
    assert decoder is not None and decoder.package == path
    # its logits are the eager forward's up to float32 rounding
    logits = decoder.prefill(PROMPT)
    step = decoder.step(int(logits.argmax()))
    with torch.no_grad():
        reference = model(torch.tensor([PROMPT + [int(logits.argmax())]]))[0, -1]
    torch.testing.assert_close(step[0], reference, rtol=1e-4, atol=1e-4)


def test_a_hooked_generation_takes_the_eager_path(built):
    model, _ = built
    seen = []
    with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.shape[1]))]):
        assert usable_package(model, 30) is None
        tokens = list(generate_tokens(model, PROMPT, 6, temperature=0))
    assert seen == [len(PROMPT)] + [1] * 5  # the prefill, then every step went through the hook
    assert tokens == list(generate_tokens(model, PROMPT, 6, temperature=0, fast=False))
    handle = model.blocks[0].mlp.register_forward_hook(lambda *args: None)  # a plain module hook
    try:
        assert usable_package(model, 30) is None
    finally:
        handle.remove()
    assert usable_package(model, 30) is not None


def test_edited_weights_are_not_decoded_with_the_frozen_ones(built):
    model, path = built
    weight = model.blocks[1].mlp.down_proj.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(0.5)  # an ablation in place: the package's frozen copy is now wrong
    try:
        assert usable_package(model, 30) is None
        edited = list(generate_tokens(model, PROMPT, 12, temperature=0))
        assert edited == list(generate_tokens(model, PROMPT, 12, temperature=0, fast=False))
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert usable_package(model, 30) == path  # the same bytes again: fingerprinted anew, usable


def test_a_replaced_module_or_parameter_mid_session_leaves_the_package(built):
    """The module tree is walked once and reused; replacing a module or a parameter (setattr, a direct
    ``_parameters`` edit), deleting or inserting a layer, or hooking a module between two steps must
    still be seen at the next step."""
    model, path = built
    session, exact = Session(model, PROMPT, temperature=0), Session(model, PROMPT, temperature=0, fast=False)
    session.step(2), exact.step(2)
    unedited = session.step().logits
    session.rewind(1)
    assert packaged.still_usable(model, path)
    mlp = model.blocks[1].mlp
    halved = type(mlp.down_proj)(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    with torch.no_grad():
        halved.weight.copy_(mlp.down_proj.weight * 0.5)
    original, weight, layers = mlp.down_proj, mlp.down_proj.weight, list(model.blocks)
    edits = [
        lambda: setattr(mlp, "down_proj", halved),  # a module replaced
        lambda: setattr(original, "weight", torch.nn.Parameter(halved.weight.detach().clone())),
        lambda: original._parameters.__setitem__("weight", torch.nn.Parameter(halved.weight.detach())),
    ]
    try:
        for edit in edits:
            edit()
            assert not packaged.still_usable(model, path)
            record, expected = session.step(), exact.step()  # the hookable forward on the edited model
            torch.testing.assert_close(record.logits, expected.logits, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(record.logits, unedited, atol=1e-3)  # not the frozen weights'
            session.rewind(1), exact.rewind(1)
            mlp.down_proj = original
            original.weight = weight
            assert packaged.still_usable(model, path)
        # what bypasses torch's registration hooks: a layer deleted, one inserted, a child deleted
        block = model.blocks[1]
        del model.blocks[1]
        assert not packaged.still_usable(model, path)
        model.blocks.insert(1, block)
        assert packaged.still_usable(model, path)
        model.blocks.insert(1, block)  # the same layer twice: as many parameters, one more layer
        assert not packaged.still_usable(model, path)
        del model.blocks[1]
        assert packaged.still_usable(model, path)
        del mlp.down_proj
        assert not packaged.still_usable(model, path)
        mlp.down_proj = original
        assert packaged.still_usable(model, path)
        handle = model.blocks[0].attn.register_forward_hook(lambda *args: None)
        assert not packaged.still_usable(model, path)
        handle.remove()
        assert packaged.still_usable(model, path)
    finally:
        mlp.down_proj, original.weight = original, weight
        model.blocks = torch.nn.ModuleList(layers)


def test_a_model_checked_for_a_package_is_still_freed(built):
    """The per-model caches (fingerprint, module tree) hold their model weakly."""
    model = tiny_model(seed=3)  # the built package's weights
    assert usable_package(model, 30) is not None and packaged.still_usable(model, built[1])
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def test_another_models_weights_do_not_match(built):
    assert usable_package(tiny_model(seed=4), 30) is None


def test_a_corrupt_package_falls_back_with_a_warning(built, tmp_path, monkeypatch):
    model, path = built
    broken = tmp_path / path.name
    broken.write_bytes(b"not a package")
    broken.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(PackageError, match="could not be loaded.*llama3-lab compile MODEL --force"):
        FastDecoder(model, 64, package=broken)
    monkeypatch.setattr(packaged, "usable_package", lambda *args, **kwargs: broken)
    fast._DECODERS.pop(model, None)
    with pytest.warns(UserWarning, match="could not be loaded.*eager path instead"):
        tokens = list(generate_tokens(model, PROMPT, 6, temperature=0))
    assert tokens == list(generate_tokens(model, PROMPT, 6, temperature=0, fast=False))
    with pytest.raises(PackageError):  # asked for explicitly: the error itself
        list(generate_tokens(model, PROMPT, 6, temperature=0, fast={"package": broken}))


def test_bad_builds_are_refused(built):
    model, _ = built
    with pytest.raises(PackageError, match="multiple of 64"):
        build_package(model, capacity=100, echo=None)
    with pytest.raises(PackageError, match="at most the model's context"):
        build_package(model, capacity=128, echo=None)  # the tiny context is 64
    with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: None)]):
        with pytest.raises(fast.FastPathError, match="hooks are registered"):
            build_package(model, capacity=64, echo=None)
    with pytest.raises(PackageError, match="float32 or bfloat16"):
        build_package(tiny_model(seed=3, dtype=torch.float64), capacity=64, echo=None)


def test_a_package_of_another_format_is_refused(built, tmp_path):
    _model, path = built
    older = tmp_path / path.name
    older.write_bytes(path.read_bytes())
    record = json.loads(path.with_suffix(".json").read_text())
    older.with_suffix(".json").write_text(json.dumps({**record, "format": packaged.FORMAT - 1}))
    with pytest.raises(PackageError, match="format .* rebuild it with `llama3-lab compile`"):
        FastDecoder(tiny_model(seed=3), 64, package=older)


def test_the_decoder_refuses_a_package_of_another_batch(built):
    model, path = built
    with pytest.raises(PackageError, match="holds 64 positions for batch 1.*batch 2"):
        FastDecoder(model, 64, batch_size=2, package=path)


def test_a_session_steps_with_the_package_and_records_the_same(built, monkeypatch):
    model, path = built
    calls = []
    real = packaged.load_package
    monkeypatch.setattr(packaged, "load_package", lambda p: calls.append(p) or real(p))
    fast_session = Session(model, PROMPT, temperature=0)
    exact = Session(model, PROMPT, temperature=0, fast=False)
    assert fast_session.cache.max_length == 64  # the package's capacity
    for a, b in zip(fast_session.step(10), exact.step(10)):
        assert (a.token_id, a.position) == (b.token_id, b.position)
        assert a.attention.shape == b.attention.shape  # [layers, heads, position]
        torch.testing.assert_close(a.attention, b.attention, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.resid, b.resid, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    assert calls and set(calls) == {path}
    # rewind and fork keep working on the compiled step: the same tokens again
    tokens = list(fast_session.tokens)
    fast_session.rewind(4)
    fast_session.step(4)
    twin = fast_session.fork()
    assert fast_session.tokens == tokens
    assert [r.token_id for r in twin.step(3)] == [r.token_id for r in exact.step(3)]


def test_a_session_checks_hooks_and_weights_once_per_step_call_and_again_at_the_next(built, monkeypatch):
    """Between the tokens of one ``step(n)`` no caller code runs, so the package's checks are asked once;
    an edit before the next call still sends that call to the hookable forward."""
    import llama3_lab.session as session_module

    model, _ = built
    asked = []
    real = session_module.still_usable
    monkeypatch.setattr(session_module, "still_usable", lambda m, p: asked.append(1) or real(m, p))
    session = Session(model, PROMPT, temperature=0)
    exact = Session(model, PROMPT, temperature=0, fast=False)
    assert [r.token_id for r in session.step(6)] == [r.token_id for r in exact.step(6)]
    assert len(asked) == 1
    seen = []
    with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.shape))]):
        session.step(3)  # asked at its first token: hooked, so every token takes the hookable forward
    assert len(seen) == 3 and len(asked) == 1 + 3
    session.step(2)
    assert len(asked) == 1 + 3 + 1


def test_a_hooked_session_step_is_the_hookable_forward(built):
    model, _ = built
    session = Session(model, PROMPT, temperature=0)
    seen = []
    with model.hooks([("blocks.1.hook_mlp_out", lambda x, hook: seen.append(x.shape))]):
        hooked = session.step()
    assert seen == [torch.Size([1, 1, model.cfg.hidden_size])]
    exact = Session(model, PROMPT, temperature=0, fast=False).step()
    assert torch.equal(hooked.logits, exact.logits)  # the exact path, to the bit
    assert session.step().position == hooked.position + 1  # and the package again after it


def test_no_cpp_compiler_is_a_clear_error(built, monkeypatch):
    model, _ = built
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(packaged.shutil, "which", lambda name: None)
    with pytest.raises(PackageError, match="needs a C\\+\\+ compiler.*apt-get install g\\+\\+"):
        build_package(model, capacity=64, force=True, echo=None)


def test_compile_at_setup_says_why_it_builds_nothing(built, monkeypatch, capsys):
    """``make lab`` runs ``llama3-lab compile --at-setup``: where no package can be built, a reason and
    exit 0 (the lab still starts); without ``--at-setup`` the same is an error (exit 2)."""
    import llama3_lab.loading
    from llama3_lab import cli

    model, _ = built
    monkeypatch.setattr(llama3_lab.loading, "load_model", lambda *a, **k: model)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(packaged.shutil, "which", lambda name: None)
    assert cli.main(["compile", "tiny", "--max-length", "64", "--force", "--at-setup"]) == 0
    err = capsys.readouterr().err
    assert "no compiled decode step: compiling the decode step needs a C++ compiler" in err
    assert "hookable path" in err
    assert cli.main(["compile", "tiny", "--max-length", "64", "--force"]) == 2
    assert "error: compiling the decode step needs a C++ compiler" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["compile", "tiny", "--at-setup"]) == 0
    assert "a CUDA GPU is here" in capsys.readouterr().err


def test_compile_at_setup_finds_the_built_package(built, monkeypatch, capsys):
    import llama3_lab.loading
    from llama3_lab import cli

    model, path = built
    monkeypatch.setattr(llama3_lab.loading, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(packaged, "INDUCTOR_CONFIGS", QUICK)  # the configs `built` was compiled with
    assert cli.main(["compile", "tiny", "--max-length", "64", "--at-setup"]) == 0
    assert capsys.readouterr().out.strip() == str(path)


def test_a_package_attends_over_the_filled_blocks_only_and_decodes_past_them(home):
    """A package of 192 positions is exported with the cache's length dynamic: each step reads the filled
    positions rounded up to 64 (its pattern row is that long), and a generation that crosses two block
    boundaries gives the eager path's greedy tokens and, in a Session, its records."""
    model = tiny_model(seed=4, max_position_embeddings=256)
    path = build_package(model, capacity=192, inductor_configs=QUICK, echo=None)
    assert usable_package(model, 150) == path
    step = packaged.packaged_step(model, path)
    decoder = FastDecoder(model, 192, package=path)
    decoder.prefill(PROMPT)
    for position, expected in ((5, 64), (63, 64), (64, 128), (130, 192)):
        keys, values = decoder.cache.keys, decoder.cache.values
        *_, pattern = step(torch.tensor([[3]]), torch.tensor(position), keys, values)
        assert pattern.shape[-1] == expected  # [L B H T]: the filled blocks, not the capacity
    n = 150 - len(PROMPT)
    eager = list(generate_tokens(model, PROMPT, n, temperature=0, fast=False))
    assert list(generate_tokens(model, PROMPT, n, temperature=0)) == eager
    assert decoder_in_use(model).package == path
    fast_session, exact = (
        Session(model, PROMPT, temperature=0),
        Session(model, PROMPT, temperature=0, fast=False),
    )
    assert fast_session._package == path
    for a, b in zip(fast_session.step(70), exact.step(70)):  # positions 5-74: across the boundary at 64
        assert a.token_id == b.token_id and a.attention.shape == b.attention.shape
        torch.testing.assert_close(a.attention, b.attention, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
