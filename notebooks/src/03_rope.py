# %% [markdown]
# # 03 · RoPE: rotary position embeddings
#
# Attention by itself is blind to order: shuffle the tokens and every q·k score stays the same. Llama encodes
# position by **rotating** each query and key: pairs of dimensions are turned by an angle proportional to the
# position. Then q·k depends on how far apart two tokens are, not on where they are. RoPE also has the most
# famous silent bug in Llama implementations: two conventions for which dimensions form a pair.
#
# **You will learn:**
# - the frequencies θ^(−2i/d) and wavelengths of each pair, for θ = 10⁴ (Llama 2) and θ = 5·10⁵ (Llama 3);
# - how a pair rotates with position, and the cos/sin tables in both layouts;
# - both conventions, Meta's (adjacent pairs, complex numbers) and Hugging Face's (`rotate_half`), the weight
#   permutation between them, and a check that they give identical scores;
# - the relative-position property: q·k depends only on m − n;
# - what the wrong convention does: scores right at distance 0, wrong from distance 1;
# - Llama 3.1's RoPE scaling bands, re-derived and checked; `RoPEExplorer`.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU in float32 (its real queries and keys at layer 0),
# plus RoPE tables for Llama 3 8B's shapes (d = 128) and random vectors where any vector will do. With
# `LLAMA3_LAB_WEIGHTS` set and a CUDA GPU, the model cells run Llama 3 in bf16 (*Built with Meta Llama 3*).

# %%
import math

import torch
from einops import rearrange

from llama3_lab import LlamaConfig, viz
from llama3_lab.config import LLAMA31_ROPE_SCALING
from llama3_lab.loading.layouts import hf_to_meta_qk, meta_to_hf_qk
from llama3_lab.model import Rotary, apply_rotary, apply_rotary_complex, rope_inv_freq, rotate_half
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.viz.rope import rope_config

setup_notebook()

# %% [markdown]
# ## 1. Frequencies and wavelengths
#
# Split each d-dimensional query/key head into d/2 pairs. Pair i is rotated by angle `p · f_i` at position p,
# with `f_i = θ^(−2i/d)`: pair 0 turns one radian per token, the last pair almost not at all. Its
# **wavelength** 2π/f_i is the number of tokens for one full turn. A pair whose wavelength far exceeds the
# context never completes a turn: even at the largest distance in the context it is barely rotated, so it
# carries almost no position information (scores depend only on the distance m − n, section 4, and such a pair
# hardly tells distances apart). It behaves almost like an unrotated, position-free channel. Llama 3 raised θ
# from 10⁴ to 5·10⁵ to stretch those wavelengths for longer contexts.

# %%
d = 128
pairs = torch.arange(d // 2)  # [d/2]
inv_freq = {theta: theta ** (-2 * pairs.double() / d) for theta in (1e4, 5e5)}  # [d/2] each, float64
for theta, f in inv_freq.items():
    torch.testing.assert_close(f.float(), rope_inv_freq(rope_config(theta, d)))

# %%
# NBVAL_CHECK_OUTPUT
for theta, f in inv_freq.items():
    wavelengths = 2 * math.pi / f
    beyond = (wavelengths > 8192).sum().item()
    print(f"θ={theta:g}: wavelengths {wavelengths[0].item():.2f} .. {wavelengths[-1].item():,.0f} tokens; "
          f"{beyond} of {d // 2} pairs longer than 8192")

# %%
viz.rope_frequencies(thetas=(1e4, 5e5), head_dim=128, context_length=8192)

# %% [markdown]
# ## 2. Rotating pairs with position
#
# Put a unit vector in pair i and move it along the positions: it walks around the circle, fast for small i,
# slowly for large i. Left: the points; right: the angle (mod 2π) against position.

# %%
viz.rope_rotation(pair=[0, 8, 24], positions=64, source=rope_config(5e5, 128))

# %% [markdown]
# The rotation is computed from cos and sin tables `[P, d]`. Hugging Face's layout pairs dim i with dim i + d/2,
# so its table is two copies of the `[P, d/2]` angles side by side; Meta pairs dims 2i and 2i + 1, so each
# column appears twice in a row. Same angles, different dimension order.

# %%
cos, sin = Rotary(rope_config(5e5, 128))(0, 64)  # [P, d], float32, Hugging Face layout
viz.rope_table(cos, sin, convention="both")

# %% [markdown]
# ## 3. Both conventions on real queries and keys
#
# Take the queries and keys of layer 0 of the model, before RoPE (`hook_q`, `hook_k`: `[B, P, heads, d]`, in
# the Hugging Face layout the package uses) and after (`hook_rot_q`, `hook_rot_k`).

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
ids = torch.tensor([tok.encode("Rotary embeddings turn pairs of dimensions by an angle that grows with position.")])
names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k",
         "blocks.0.ln1.hook_out"]
_, cache = model.run_with_cache(ids, names_filter=names)
q, k = cache["blocks.0.attn.hook_q"].float(), cache["blocks.0.attn.hook_k"].float()
P, dh = q.shape[1], cfg.head_dim
positions = torch.arange(P)
show_shapes(q=q, k=k, rot_q=cache["blocks.0.attn.hook_rot_q"])

# %% [markdown]
# **Hugging Face (`rotate_half`).** With `x = (x₁, x₂)` the two halves of a head, the rotation is
# `x · cos + rotate_half(x) · sin` where `rotate_half(x) = (−x₂, x₁)`: dim i and dim i + d/2 turn together.

# %%
f = rope_inv_freq(cfg)  # [d/2] float32
angles = torch.outer(positions.float(), f)  # [P, d/2]
cos_hf = torch.cat([angles, angles], dim=-1).cos()[:, None, :]  # [P, 1, d]: shared by every head
sin_hf = torch.cat([angles, angles], dim=-1).sin()[:, None, :]
x1, x2 = q[..., : dh // 2], q[..., dh // 2 :]
rot_q_hf = q * cos_hf + torch.cat([-x2, x1], dim=-1) * sin_hf  # [B, P, H, d]
torch.testing.assert_close(rot_q_hf, cache["blocks.0.attn.hook_rot_q"].float())

# %% [markdown]
# **Meta (complex numbers).** Meta reads dims (2i, 2i + 1) as one complex number `a + ib` and multiplies it by
# `e^{i·p·f_i}`. The same rotation, on a different pairing. To use it on this model we must first move each
# head's dims into Meta's order: the first-half dims `0..d/2−1` of the HF head become Meta's even positions
# 0, 2, 4, ..., the second-half dims `d/2..d−1` its odd positions 1, 3, 5, ... (so HF's pair (i, i + d/2)
# lands on Meta's pair (2i, 2i + 1)). Doing that to the **weights** of `q_proj` and `k_proj` is the
# permutation `hf_to_meta_qk` (inverse: `meta_to_hf_qk`).

# %%
W_q = model.blocks[0].attn.q_proj.weight  # [H·d, D], Hugging Face layout
W_q_meta = hf_to_meta_qk(W_q, cfg.num_attention_heads)  # [H·d, D], Meta layout
x_in = cache["blocks.0.ln1.hook_out"]  # [B, P, D]: what q_proj reads
q_meta = rearrange(x_in @ W_q_meta.T, "b p (h d) -> b p h d", h=cfg.num_attention_heads).float()
# the same permutation, written on the vectors: (two half) -> (half two) inside each head
torch.testing.assert_close(q_meta, rearrange(q, "b p h (two half) -> b p h (half two)", two=2))
torch.testing.assert_close(meta_to_hf_qk(W_q_meta, cfg.num_attention_heads), W_q)  # the inverse
half = dh // 2
assert torch.equal(q_meta[..., 0::2], q[..., :half]) and torch.equal(q_meta[..., 1::2], q[..., half:])

pairs_complex = torch.view_as_complex(rearrange(q_meta, "b p h (half two) -> b p h half two", two=2).contiguous())
rotation = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # [P, 1, d/2] = e^{i p f}
rot_q_meta = rearrange(torch.view_as_real(pairs_complex * rotation), "b p h half two -> b p h (half two)")
torch.testing.assert_close(rot_q_meta, apply_rotary_complex(q_meta, positions, f))

# %% [markdown]
# Both conventions rotate the same numbers: Meta's result, put back in HF order, is HF's result. So the
# attention scores are identical, which is the whole point of the permutation.
#
# The independent reference for that claim is Meta's own code: `precompute_freqs_cis` and
# `apply_rotary_emb` below are copied from Meta's `llama3/model.py` (type hints shortened), with nothing
# from this package. Fed the permuted queries and keys, their output put back in HF order must equal what
# the package's model computed (`hook_rot_q`, `hook_rot_k`).

# %%
# NBVAL_CHECK_OUTPUT
def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0):  # Meta, llama3/model.py
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device, dtype=torch.float32)
    freqs = torch.outer(t, freqs)
    freqs_cis = torch.polar(torch.ones_like(freqs), freqs)  # complex64
    return freqs_cis


def reshape_for_broadcast(freqs_cis: torch.Tensor, x: torch.Tensor):  # Meta, llama3/model.py
    ndim = x.ndim
    assert 0 <= 1 < ndim
    assert freqs_cis.shape == (x.shape[1], x.shape[-1])
    shape = [d if i == 1 or i == ndim - 1 else 1 for i, d in enumerate(x.shape)]
    return freqs_cis.view(*shape)


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor):  # Meta, llama3/model.py
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


freqs_cis = precompute_freqs_cis(dh, P, cfg.rope_theta)  # [P, d/2] complex
if cfg.rope_scaling:  # Llama 3.1 weights: Meta's 3.1 code scales these frequencies (section 6)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
k_meta = rearrange(k, "b p h (two half) -> b p h (half two)", two=2)
meta_q, meta_k = apply_rotary_emb(q_meta, k_meta, freqs_cis)
to_hf = lambda x: rearrange(x, "b p h (half two) -> b p h (two half)", two=2)  # noqa: E731
torch.testing.assert_close(to_hf(meta_q), cache["blocks.0.attn.hook_rot_q"].float())
torch.testing.assert_close(to_hf(meta_k), cache["blocks.0.attn.hook_rot_k"].float())
torch.testing.assert_close(to_hf(rot_q_meta), rot_q_hf)  # our two derivations agree too
rot_k_meta = apply_rotary_complex(k_meta, positions, f)
rot_k_hf = apply_rotary(k, *Rotary(cfg)(0, P))
G = cfg.num_attention_heads // cfg.num_key_value_heads
scores_hf = torch.einsum("bqhd,bkhd->bhqk", rot_q_hf, rot_k_hf.repeat_interleave(G, dim=2))
scores_meta = torch.einsum("bqhd,bkhd->bhqk", rot_q_meta, rot_k_meta.repeat_interleave(G, dim=2))
torch.testing.assert_close(scores_meta, scores_hf, atol=1e-4, rtol=1e-4)
show_shapes(scores=scores_hf)
print("Meta and Hugging Face conventions give the same scores")

# %% [markdown]
# ## 4. The relative-position property
#
# Rotations compose: rotating q by angle m·f and k by n·f, then taking the dot product, is the same as
# rotating k by (n − m)·f alone. So the score depends only on the offset m − n: shift both tokens by the same
# amount and nothing changes. Check it with random vectors at very different absolute positions:

# %%
# NBVAL_CHECK_OUTPUT
llama3_rope = rope_config(5e5, 128)
q_vec, k_vec = torch.randn(2, 1, 1, 1, 128).unbind(0)  # [B=1, P=1, heads=1, d]


def score(m: int, n: int) -> torch.Tensor:
    cos_m, sin_m = Rotary(llama3_rope)(m, 1)
    cos_n, sin_n = Rotary(llama3_rope)(n, 1)
    return (apply_rotary(q_vec, cos_m, sin_m) * apply_rotary(k_vec, cos_n, sin_n)).sum()


for m, n in [(3, 0), (103, 100), (5003, 5000)]:
    print(f"q at {m:>4}, k at {n:>4}: score {fmt(score(m, n), 2)}")
torch.testing.assert_close(score(5003, 5000), score(3, 0), atol=1e-3, rtol=1e-4)
assert not torch.allclose(score(4, 0), score(3, 0))

# %% [markdown]
# With q = k, the score against distance starts at its maximum and decays (with oscillations) as pairs drift
# out of phase: a built-in bias toward nearby tokens. Larger θ decays more slowly.

# %%
viz.rope_score_vs_distance(max_distance=8192)

# %% [markdown]
# ## 5. Common mistake: the wrong convention
#
# Load Meta-layout weights (or a GGUF file, which follows Meta) and apply `rotate_half` without permuting
# `q_proj`/`k_proj`: nothing crashes. Worse, at distance 0 the score is exactly right, because rotating q and
# k by the *same* angle cancels out whatever pairing is used. From distance 1 on, the scores are wrong. A test
# that only checks single tokens, or the diagonal, passes.

# %%
# NBVAL_CHECK_OUTPUT
wrong_q = apply_rotary(q_meta, *Rotary(cfg)(0, P))  # rotate_half on Meta-ordered dims: the bug
wrong_k = apply_rotary(k_meta, *Rotary(cfg)(0, P))
scores_wrong = torch.einsum("bqhd,bkhd->bhqk", wrong_q, wrong_k.repeat_interleave(G, dim=2))
error = (scores_wrong - scores_hf).abs()[0]  # [H, Pq, Pk]
for distance in range(4):
    print(f"distance {distance}: max |score error| "
          f"{'< 1e-4' if error.diagonal(-distance, 1, 2).max() < 1e-4 else 'large (> 0.1)'}")
assert error.diagonal(0, 1, 2).max() < 1e-4 and error.diagonal(-1, 1, 2).max() > 0.1

# %% [markdown]
# ## 6. Llama 3.1: scaling RoPE for 128K tokens
#
# Llama 3.1 extends the context from 8,192 to 131,072 tokens without retraining from scratch by slowing down
# the *slow* pairs only (`rope_scaling.rope_type = "llama3"`). With wavelength λ = 2π/f and the original
# context `orig = 8192`:
# - λ < orig / high_freq_factor (4): short wavelengths, local order: **unchanged**;
# - λ > orig / low_freq_factor (1): long wavelengths: **divided by factor** (8), as if positions were 8× closer;
# - in between: interpolated, s = (orig/λ − low)/(high − low), f′ = (1 − s)·f/factor + s·f.

# %%
# NBVAL_CHECK_OUTPUT
scaling = dict(LLAMA31_ROPE_SCALING)
print(scaling)
factor, low, high, orig = (scaling[key] for key in ("factor", "low_freq_factor", "high_freq_factor",
                                                      "original_max_position_embeddings"))
f_old = rope_inv_freq(rope_config(5e5, 128)).double()  # [64]
wavelength = 2 * math.pi / f_old
s = ((orig / wavelength - low) / (high - low)).clamp(0, 1)  # 0 for long wavelengths, 1 for short
f_new = torch.where(wavelength < orig / high, f_old,
                    torch.where(wavelength > orig / low, f_old / factor, (1 - s) * f_old / factor + s * f_old))
cfg31 = rope_config(5e5, 128, rope_scaling=scaling)
torch.testing.assert_close(f_new.float(), rope_inv_freq(cfg31))
ratio = f_new / f_old
smoothed = [i for i in range(64) if 1 / factor < ratio[i] < 1]
print("unchanged pairs:", f"0-{smoothed[0] - 1};", "smoothed:", f"{smoothed[0]}-{smoothed[-1]};",
      "divided by 8:", f"{smoothed[-1] + 1}-63")
print("new/old in the smoothed band:", fmt(ratio[smoothed]))
assert cfg31.rope_pair_regimes()["smoothed"] == smoothed

# %%
viz.rope_scaling_bands(cfg31)

# %% [markdown]
# ## 7. Explore: `RoPEExplorer`
#
# Slide the position, the pair and θ; switch the scaling and the layout. The readout gives the pair's
# frequency, wavelength and angle; the figures show the rotation and the cos/sin table.

# %%
# NBVAL_IGNORE_OUTPUT
from llama3_lab.widgets import RoPEExplorer

explorer = RoPEExplorer(position=64, pair=0)
explorer

# %% [markdown]
# Its readings are plain attributes, so code can check them. The check drives a second explorer: the one
# shown above stays at pair 0, position 64.

# %%
# NBVAL_CHECK_OUTPUT
probe = RoPEExplorer(position=64, pair=0)
probe.pair.value = 10
probe.position.value = 100
readings = probe.readings
assert explorer.readings["pair"] == 0 and explorer.readings["position"] == 64  # the one displayed is unchanged
assert readings["pair"] == 10 and readings["position"] == 100
assert math.isclose(readings["frequency"], inv_freq[5e5][10].item(), rel_tol=1e-6)
assert math.isclose(readings["angle"], math.fmod(100 * readings["frequency"], 2 * math.pi), rel_tol=1e-9)
print(f"pair 10 at θ=5e5: wavelength {readings['wavelength']:.1f} tokens")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `rope_hf(x, positions, inv_freq)`: Hugging Face's rotation of `x [B, P, heads, d]`
# (dim i pairs with dim i + d/2). The check compares with the package's `apply_rotary`.

# %%
# NBVAL_CHECK_OUTPUT
def rope_hf(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


def package_rope_hf(x, positions, inv_freq):
    angles = torch.outer(positions.float(), inv_freq)
    table = torch.cat([angles, angles], dim=-1)
    return apply_rotary(x, table.cos(), table.sin())


x_check, pos_check, f_check = torch.randn(2, 7, 3, 16), torch.arange(10, 17), rope_inv_freq(rope_config(1e4, 16))
check_exercise(rope_hf, package_rope_hf, x_check, pos_check, f_check)

# %% solution
# Solution to exercise 1: rope_hf
# NBVAL_CHECK_OUTPUT
def rope_hf_solution(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    angles = torch.outer(positions.float(), inv_freq)  # [P, d/2]
    cos = torch.cat([angles, angles], dim=-1).cos()[:, None, :]  # [P, 1, d]
    sin = torch.cat([angles, angles], dim=-1).sin()[:, None, :]
    return x * cos + rotate_half(x) * sin


check_exercise(rope_hf_solution, package_rope_hf, x_check, pos_check, f_check)

# %% [markdown]
# **Exercise 2.** Write `rope_meta(x, positions, inv_freq)`: Meta's rotation, pairing dims (2i, 2i + 1) as
# complex numbers (hint: `torch.view_as_complex`, `torch.polar`). The check compares with
# `apply_rotary_complex`.

# %%
# NBVAL_CHECK_OUTPUT
def rope_meta(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_exercise(rope_meta, apply_rotary_complex, x_check, pos_check, f_check)

# %% solution
# Solution to exercise 2: rope_meta
# NBVAL_CHECK_OUTPUT
def rope_meta_solution(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    angles = torch.outer(positions.float(), inv_freq)  # [P, d/2]
    z = torch.view_as_complex(rearrange(x, "... (half two) -> ... half two", two=2).contiguous())
    z = z * torch.polar(torch.ones_like(angles), angles)[:, None, :]  # broadcast over batch and heads
    return rearrange(torch.view_as_real(z), "... half two -> ... (half two)")


check_exercise(rope_meta_solution, apply_rotary_complex, x_check, pos_check, f_check)

# %% [markdown]
# ## What to remember
# - Pair i turns by p · θ^(−2i/d) at position p; wavelengths run from 6.3 tokens to millions (θ = 5·10⁵).
# - Meta pairs (2i, 2i+1); Hugging Face pairs (i, i + d/2). Converting weights = permuting the rows of
#   `q_proj`/`k_proj` within each head (`meta_to_hf_qk` / `hf_to_meta_qk`); v, o and the MLP are untouched.
# - q·k depends only on the offset m − n.
# - Wrong convention: right at distance 0, wrong from distance 1: test on sequences, not single tokens.
# - Llama 3.1 scaling: pairs 0-28 unchanged, 29-34 smoothed, 35-63 divided by 8; tables stay float32.
