# %% [markdown]
# # 02 · Embeddings and RMSNorm
#
# The first thing a Llama does with token ids is look up one vector per token; the first thing every block
# does with the residual stream is normalize it. Both are one line of code, and both hide classic bugs.
#
# **You will learn:**
# - why an embedding lookup *is* a one-hot vector times a matrix (and why nobody computes it that way);
# - tied vs untied embeddings: SmolLM2 ties its unembedding to the embedding, Llama 3 8B does not;
# - RMSNorm from scratch, with the float32 upcast and `eps`, checked against the package;
# - why the residual stream needs normalizing at all: its norm grows layer after layer;
# - the learned RMSNorm gains across the 30 layers of a trained model;
# - two common mistakes: `eps = 1e-6` instead of `1e-5`, and normalizing in bf16.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct (a trained Llama-architecture model) on CPU in float32.
# With `LLAMA3_LAB_WEIGHTS` set and a CUDA GPU, the same cells run Llama 3 on CUDA in bf16 (*Built with Meta
# Llama 3*).

# %%
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from llama3_lab import LlamaConfig, viz
from llama3_lab.model import RMSNorm
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes

setup_notebook()
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
E = model.embed.weight  # [V, D]

# %% [markdown]
# ## 1. The embedding: a lookup that is a matrix product
#
# The embedding matrix `E` has one row per token id: `[V, D]`. Token id `t` becomes row `E[t]`. Written as
# linear algebra, that is the one-hot vector of `t` (a `[V]` vector with a single 1) times `E`. The product is
# what the math says; the lookup is what code does, because multiplying by a one-hot wastes V× the work
# (49,152 multiply-adds per output number for SmolLM2, 128,256 for Llama 3) and V× the memory.

# %%
# NBVAL_CHECK_OUTPUT
prompt = "The capital of France is"
ids = torch.tensor(tok.encode(prompt), device=E.device)
one_hot = F.one_hot(ids, num_classes=cfg.vocab_size).to(E.dtype)  # [P, V]
by_matmul = one_hot @ E  # [P, V] @ [V, D] -> [P, D]
by_lookup = E[ids]  # [P, D]
show_shapes(ids=ids, E=E, one_hot=one_hot, by_matmul=by_matmul, by_lookup=by_lookup)
print("ids:", ids.tolist())

# %% [markdown]
# Both equal what the package's model computes: the `hook_embed` activation of a real forward pass.

# %%
_, cache = model.run_with_cache(ids[None], names_filter=["hook_embed", "ln_final.hook_normalized"])
torch.testing.assert_close(by_matmul, by_lookup)
torch.testing.assert_close(by_lookup, cache["hook_embed"][0])

# %% [markdown]
# ## 2. Tied and untied embeddings
#
# At the other end, the unembedding turns the final residual vector into one logit per token: `logits = x · Wᵀ`
# with `W` of shape `[V, D]`. **Tied** models reuse `E` as `W`; **untied** ones learn a separate matrix.
# Tying saves `V · D` parameters, a large share in a small model, a small share in a big one.

# %%
# NBVAL_CHECK_OUTPUT
llama3_8b = LlamaConfig.from_json("../config.json")
for name, c in [("SmolLM2-135M", cfg if not nb.is_llama3 else None), ("Llama 3 8B", llama3_8b)]:
    if c is None:
        continue
    share = c.vocab_size * c.hidden_size / c.num_parameters()
    print(f"{name:13s} tied={c.tie_word_embeddings!s:5s}  V·D = {c.vocab_size * c.hidden_size:>11,} "
          f"= {share:.1%} of {c.num_parameters():,}")

# %% [markdown]
# In the package a tied model's unembedding *is* the embedding tensor (the same storage), and the logits are
# the final normalized residual times `Eᵀ`:

# %%
if cfg.tie_word_embeddings:
    assert model.unembed.weight.data_ptr() == E.data_ptr()
final = cache["ln_final.hook_normalized"][0] * model.ln_final.weight  # [P, D]
logits = model(ids[None])[0]  # [P, V]
torch.testing.assert_close(final @ model.unembed.weight.T, logits, atol=1e-4, rtol=1e-4)

# %% [markdown]
# One consequence of tying: the **direct path** embed → unembed (skipping every block) scores token `t` by
# `E[t] · E[s]` for every `s`, and a row has a large dot product with itself. So a tied model's direct path
# predicts "the same token again"; the blocks must work against it. (An untied model can learn a bigram table
# there instead.)

# %%
# NBVAL_CHECK_OUTPUT
sample_ids = torch.arange(1000, 1500, device=E.device)
direct = E[sample_ids].float() @ E.float().T  # [500, V]
print(f"direct path predicts the input token itself for {(direct.argmax(-1) == sample_ids).float().mean().item():.0%} "
      "of 500 tokens")

# %% [markdown]
# ## 3. Why normalize: the residual stream grows
#
# Every block *adds* its attention and MLP outputs to the residual stream, so its size drifts layer after layer.
# Each block therefore reads a normalized copy. The figure shows ‖x‖ of the residual stream at every layer
# and position (log colour scale).

# %%
tokens = tok.token_strings(ids.tolist())
_, resid = model.run_with_cache(ids[None], names_filter=lambda name: name.endswith("hook_resid_post"))
norms = torch.stack([resid[f"blocks.{layer}.hook_resid_post"][0].float().norm(dim=-1)
                     for layer in range(cfg.num_hidden_layers)])  # [L, P]
viz.residual_norms(norms, tokens, title="‖residual‖ after each block", figsize=(6, 3.6))

# %%
# NBVAL_CHECK_OUTPUT
show_shapes(norms=norms)
growth = norms[-1, 1:].mean() / norms[0, 1:].mean()
print(f"residual norm grows ×{growth.item():.0f} from layer 0 to layer {cfg.num_hidden_layers - 1} "
      "(tokens after the first)" if not nb.is_llama3 else "residual norms computed")
first_largest = int((norms[:, 0] > norms[:, 1:].amax(dim=-1)).sum())
if not nb.is_llama3:
    print(f"the first token, {tokens[0]!r}, has the largest norm in {first_largest} of {cfg.num_hidden_layers} layers")
    assert tokens[0] == "The" and first_largest > cfg.num_hidden_layers // 2

# %% [markdown]
# Note the first token. In SmolLM2 it is the plain word `The` (`tok.encode` adds no BOS, and SmolLM2's texts
# start without one, notebook 01), yet its residual is the largest of the prompt in most layers (the count
# above): the first position is special whatever token sits there (notebook 07 measures by how much; the
# "attention sink", notebook 04).

# %% [markdown]
# ## 4. RMSNorm from scratch
#
# $$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{D}\sum_i x_i^2 + \varepsilon}} \odot g$$
#
# Unlike LayerNorm, no mean is subtracted and there is no bias: only the scale is normalized (cheaper, and
# works as well). `g` is a learned gain per dimension. Two details matter: the statistics are computed in
# **float32** even when the model runs in bf16, and `ε = 1e-5` for Llama 3 (`rms_norm_eps`).

# %%
x = cache["hook_embed"]  # [1, P, D]: the input of the first block's ln1
ln1 = model.blocks[0].ln1
x32 = x.float()
mean_square = x32.pow(2).mean(dim=-1, keepdim=True)  # [1, P, 1]
rms = torch.sqrt(mean_square + cfg.rms_norm_eps)  # [1, P, 1]
normalized = (x32 / rms).to(x.dtype)  # [1, P, D], back to the model's dtype
ours = normalized * ln1.weight  # [1, P, D]
show_shapes(x=x, mean_square=mean_square, rms=rms, out=ours)
torch.testing.assert_close(ours, ln1(x))

# %% [markdown]
# The package's `RMSNorm` exposes `hook_scale` (the RMS) and `hook_normalized` (x / RMS before the gain), in
# TransformerLens's names, so every piece above can be read from a real forward pass:

# %%
_, norm_cache = model.run_with_cache(ids[None], names_filter=["blocks.0.ln1.hook_scale",
                                                               "blocks.0.ln1.hook_normalized"])
torch.testing.assert_close(norm_cache["blocks.0.ln1.hook_scale"], rms)
torch.testing.assert_close(norm_cache["blocks.0.ln1.hook_normalized"], normalized)

# %%
viz.token_strip(tokens, rms[0, :, 0], label="RMS of the embedding",
                title="RMS of each token's embedding (what ln1 of block 0 divides by)")

# %% [markdown]
# ## 5. Common mistake: `eps = 1e-6` instead of `1e-5`
#
# `transformers`' `LlamaRMSNorm` and many from-scratch implementations default to `eps = 1e-6`. Build the norm
# without passing the config's value and nothing fails: every activation is just slightly off. How much
# depends on `mean(x²)`: ε only matters where it is not small next to it. Compare them for SmolLM2's
# embeddings, the input of the first norm (the residual stream grows after it, section 3):

# %%
# NBVAL_CHECK_OUTPUT
print(f"mean(x²) of the embeddings: {fmt(mean_square.flatten().tolist())}")
print(f"eps = {cfg.rms_norm_eps:g}")
eps_ratio = mean_square.flatten() / cfg.rms_norm_eps
print(f"mean(x²) / eps: {eps_ratio.min():.0f} .. {eps_ratio.max():.0f}")
assert eps_ratio.min() > 100  # eps is a small correction here, not a term of the same size
rms_change = ((mean_square + cfg.rms_norm_eps) / (mean_square + 1e-6)).sqrt().max().item() - 1
print(f"largest change of an RMS from eps 1e-5 -> 1e-6: {rms_change:.3%}")
assert rms_change < 1e-3

# %% [markdown]
# So ε is small here: `mean(x²)` is hundreds of times larger (the ratio printed above), and going from 1e-5
# to 1e-6 changes each RMS by well under 0.1%. Small, but not zero, and every one of the model's norms does it.
# %% [markdown]
# Set every norm of the model to `1e-6`, run the same prompt, compare the logits, then put it back:

# %%
norms_of_model = [m for m in model.modules() if isinstance(m, RMSNorm)]
right = model(ids[None])[0, -1].float()
for m in norms_of_model:
    m.eps = 1e-6
wrong = model(ids[None])[0, -1].float()
for m in norms_of_model:
    m.eps = cfg.rms_norm_eps
torch.testing.assert_close(model(ids[None])[0, -1].float(), right)  # restored
print(len(norms_of_model), "RMSNorm modules;", f"max |Δ logit| at the last position: {(wrong - right).abs().max().item():.3f}")
assert 1e-3 < (wrong - right).abs().max() < 0.05  # far above float32 noise (~1e-5), yet about 0.01
assert right.topk(5).indices.tolist() == wrong.topk(5).indices.tolist()

# %% [markdown]
# The logits move by about 0.01 (printed above), and the top-5 next tokens are the same. No error, no visible symptom: the bug
# is found only by comparing with a reference at a tight tolerance (here it would fail the 1e-4 check that
# `llama3-lab` holds against transformers), and it grows with smaller activations and lower precision.

# %%
# NBVAL_CHECK_OUTPUT
print("top-5 next tokens, eps 1e-5:", tok.token_strings(right.topk(5).indices.tolist()))
print("top-5 next tokens, eps 1e-6:", tok.token_strings(wrong.topk(5).indices.tolist()))

# %% [markdown]
# ## 6. Common mistake: normalizing in half precision
#
# Trained models have a few **massive activations**: single residual dimensions in the thousands. Squaring
# them in fp16 (largest number 65,504) overflows to `inf`, the RMS becomes `inf`, and the whole vector is
# normalized to garbage. bf16 has the range but only 8 bits of mantissa, so it rounds. That is why the
# statistics are computed in float32. Take the real residual stream at the layer with the largest
# activation and compare both ways with a float64 reference:

# %%
all_resid = torch.stack([resid[f"blocks.{layer}.hook_resid_post"][0] for layer in range(cfg.num_hidden_layers)])
layer = int(all_resid.abs().amax(dim=(1, 2)).argmax())
r = all_resid[layer].float()  # [P, D]
reference = r.double() * torch.rsqrt(r.double().pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)
errors = {}
for dtype in (torch.float16, torch.bfloat16):
    xh = r.to(dtype)
    naive = xh * torch.rsqrt(xh.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)  # statistics in half
    upcast = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps).to(dtype)(xh)  # the package: float32 statistics
    errors[dtype] = [(y.double() - reference).abs().max().item() for y in (naive, upcast)]
    print(f"{str(dtype):15s} max error vs float64: statistics in half {errors[dtype][0]:.3g}, "
          f"in float32 {errors[dtype][1]:.3g}")
print(f"(layer {layer}, largest |activation| {r.abs().max().item():,.0f})")

# %%
# NBVAL_CHECK_OUTPUT
assert errors[torch.float16][0] > 100 * errors[torch.float16][1]  # fp16 overflow: garbage
assert errors[torch.bfloat16][0] > errors[torch.bfloat16][1]  # bf16: rounding
print("float32 statistics win in fp16 and in bf16")

# %% [markdown]
# ## 7. The learned gains across layers
#
# Each block has two gains (`ln1` before attention, `ln2` before the MLP), plus `ln_final` before the
# unembedding. After `x / RMS(x)` every vector has RMS 1; the gains then re-scale each dimension, so they
# decide how loud each direction is for the layer that reads it.

# %%
gains_ln1 = torch.stack([b.ln1.weight.float() for b in model.blocks]).cpu()  # [L, D]
gains_ln2 = torch.stack([b.ln2.weight.float() for b in model.blocks]).cpu()  # [L, D]
fig = Figure(figsize=(8, 2.8), dpi=80, layout="constrained")
ax_mean, ax_map = fig.subplots(1, 2, width_ratios=(1, 1.6))
layers = range(cfg.num_hidden_layers)
ax_mean.plot(layers, gains_ln1.abs().mean(-1), label="ln1 (before attention)")
ax_mean.plot(layers, gains_ln2.abs().mean(-1), label="ln2 (before MLP)")
ax_mean.axhline(model.ln_final.weight.float().abs().mean().item(), color="k", ls=":", label="ln_final")
ax_mean.set(xlabel="layer", ylabel="mean |gain|", title="average gain per layer")
ax_mean.legend(fontsize=7)
scale = gains_ln2.abs().quantile(0.99).item()  # a few outlier dims would wash out the rest of the map
image = ax_map.imshow(gains_ln2.abs(), aspect="auto", cmap="viridis", vmin=0, vmax=scale, interpolation="nearest")
ax_map.set(xlabel="dimension", ylabel="layer", title="|ln2 gain|, layer × dimension (clipped at the 99th pct.)")
fig.colorbar(image, ax=ax_map)
fig

# %%
# NBVAL_CHECK_OUTPUT
show_shapes(gains_ln1=gains_ln1, gains_ln2=gains_ln2)
big = (gains_ln2.abs() > 5 * gains_ln2.abs().median()).sum().item()
print("ln2 gains more than 5× the median:", "some" if big else "none")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `rms_norm(x, weight, eps)` with the float32 upcast: statistics in float32, the
# normalized vector cast back to `x.dtype`, then times `weight`. The check runs it on bf16 input.

# %%
# NBVAL_CHECK_OUTPUT
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    raise NotImplementedError  # your code here


def package_rms_norm(x, weight, eps):
    norm = RMSNorm(weight.numel(), eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm(x)


x_check = torch.randn(3, 5, 64).to(torch.bfloat16)
weight_check = (torch.rand(64) + 0.5).to(torch.bfloat16)
check_exercise(rms_norm, package_rms_norm, x_check, weight_check, 1e-5)

# %% solution
# Solution to exercise 1: rms_norm
# NBVAL_CHECK_OUTPUT
def rms_norm_solution(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalized.to(x.dtype)


check_exercise(rms_norm_solution, package_rms_norm, x_check, weight_check, 1e-5)

# %% [markdown]
# **Exercise 2.** Write `embed(ids, E)` as the *matrix product* of one-hot vectors with `E` (no indexing),
# for a batch of ids `[B, P]`. The check compares with the lookup.

# %%
# NBVAL_CHECK_OUTPUT
def embed(ids: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


small_E = torch.randn(50, 8)
batch_ids = torch.tensor([[1, 2, 3], [49, 0, 7]])
check_exercise(embed, lambda ids, E: E[ids], batch_ids, small_E)

# %% solution
# Solution to exercise 2: embed
# NBVAL_CHECK_OUTPUT
def embed_solution(ids: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    return F.one_hot(ids, num_classes=E.shape[0]).to(E.dtype) @ E  # [B, P, V] @ [V, D] -> [B, P, D]


check_exercise(embed_solution, lambda ids, E: E[ids], batch_ids, small_E)

# %% [markdown]
# ## What to remember
# - Embedding = one-hot × E, computed as a row lookup. Tied models use E again to unembed (SmolLM2: 21% of its
#   parameters saved); Llama 3 8B has a separate 525 M-parameter `lm_head`.
# - RMSNorm: x · rsqrt(mean(x²) + ε) in float32, cast back, times the gain; no mean subtraction, no bias.
# - Use the config's `rms_norm_eps` (1e-5 for Llama 3), never a library default.
# - The residual stream's norm grows through the layers; the norms let every block read it at a fixed scale.
