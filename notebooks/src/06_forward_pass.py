# %% [markdown]
# # 06 · The whole forward pass, matrix by matrix
#
# Notebooks 02-05 took the pieces apart. Here we put them back together with nothing but the weight
# matrices and a few lines of PyTorch: token ids in, the predicted next token out, and every number equal to
# the package's forward. If you can write this notebook from memory, you know Llama 3's architecture.
#
# **You will learn:**
# - the order of operations in one block: RMSNorm → q/k/v → RoPE → grouped-query attention → `o_proj` →
#   residual add → RMSNorm → SwiGLU MLP → residual add, with the shape after every step;
# - to loop that over all layers, apply the final norm and the (tied) unembedding, and read off the
#   prediction;
# - to check the hand-written forward against the package's logits with `torch.testing.assert_close`;
# - two common mistakes and their measured effect: `rms_norm_eps = 1e-6` instead of the checkpoint's value,
#   and a doubled BOS token.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (30 layers, D = 576, tied embeddings).
# With `LLAMA3_LAB_WEIGHTS` pointing at a Llama 3 checkpoint and a CUDA GPU, the same cells run Llama 3 on
# CUDA in bf16 (untied unembedding, Llama 3.1 RoPE scaling if the config has it); the comparison tolerance
# then widens to bf16's, and checked outputs are SmolLM2's.

# %%
import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from llama3_lab import analysis, viz
from llama3_lab.config import LLAMA31_ROPE_SCALING
from llama3_lab.model import rope_inv_freq
from llama3_lab.viz.rope import rope_config
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import TokenValuesView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
H, K, d, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
G = H // K
# Two float32 implementations agree to ~1e-5; bf16 ones only to bf16's ~3 significant digits.
TOL = dict(atol=1e-4, rtol=1e-4) if nb.dtype == torch.float32 else dict(atol=0.5, rtol=0.05)

# %% [markdown]
# The prompt, and the package's forward with every intermediate cached: the reference each hand-computed
# step is compared with.

# %%
# NBVAL_CHECK_OUTPUT
prompt = "The capital of France is"
tokens = model.to_tokens(prompt)  # BOS prepended once
labels = tok.token_strings(tokens[0].tolist())
with torch.no_grad():
    logits, cache = model.run_with_cache(tokens)
P = tokens.shape[1]
print(P, "tokens:", labels, tokens[0].tolist())
print(f"layers {cfg.num_hidden_layers}, D {D}, H {H}, K {K}, d {d}, M {cfg.intermediate_size}, eps {cfg.rms_norm_eps}")

# %% [markdown]
# ## 1. Embedding: a row lookup
#
# Token id `t` selects row `t` of the `[V, D]` embedding matrix (a one-hot vector times the matrix,
# notebook 02). This is the residual stream's starting value.

# %%
# NBVAL_CHECK_OUTPUT
W_E = model.embed.weight
x = W_E[tokens]
show_shapes(W_E=W_E, tokens=tokens, x=x)
torch.testing.assert_close(x, cache["embed"])

# %% [markdown]
# ## 2. One block by hand: layer 0
#
# ### RMSNorm
# Divide each position's vector by its root mean square (statistics in float32, `eps` from the config),
# then multiply by the learned gain. No mean subtraction, no bias.

# %%
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalized.to(x.dtype)


block = model.blocks[0]
eps = cfg.rms_norm_eps
h = rms_norm(x, block.ln1.weight, eps)
show_shapes(h=h)
torch.testing.assert_close(h, cache["blocks.0.ln1.hook_out"])

# %% [markdown]
# ### Queries, keys, values
# Three projections, split into heads: `H` query heads, `K` key/value heads of size `d`.

# %%
# NBVAL_CHECK_OUTPUT
q = rearrange(h @ block.attn.q_proj.weight.T, "b p (h d) -> b p h d", h=H)
k = rearrange(h @ block.attn.k_proj.weight.T, "b p (k d) -> b p k d", k=K)
v = rearrange(h @ block.attn.v_proj.weight.T, "b p (k d) -> b p k d", k=K)
show_shapes(q=q, k=k, v=v)
for name, ours in (("q", q), ("k", k), ("v", v)):
    torch.testing.assert_close(ours, cache[name, 0])

# %% [markdown]
# ### RoPE
# Pair dimension `i` with `i + d/2` (the Hugging Face layout the weights are stored in) and rotate each pair
# by the angle `position · θ^(−2i/d)`. Llama 3.1 slows the slow pairs down in bands (notebook 03 derives
# the rule); it is written out here too, and checked against the package on Llama 3.1's settings, so this
# forward pass works for any Llama 3 checkpoint without calling the package's RoPE.

# %%
# NBVAL_CHECK_OUTPUT
def inv_freq_by_hand(theta: float, head_dim: int, scaling: dict | None) -> torch.Tensor:
    """[d/2] rotation frequencies θ^(−2i/d), with Llama 3.1's bands when ``scaling`` is given."""
    freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    if not scaling:
        return freq
    factor, low, high, orig = (scaling[key] for key in ("factor", "low_freq_factor", "high_freq_factor",
                                                          "original_max_position_embeddings"))
    wavelength = 2 * math.pi / freq
    smooth = (orig / wavelength - low) / (high - low)  # 0 at λ = orig/low, 1 at λ = orig/high
    return torch.where(wavelength < orig / high, freq,  # short wavelengths: unchanged
                       torch.where(wavelength > orig / low, freq / factor,  # long: slowed by factor
                                   (1 - smooth) * freq / factor + smooth * freq))  # in between: interpolated


inv_freq = inv_freq_by_hand(cfg.rope_theta, d, cfg.rope_scaling)
torch.testing.assert_close(inv_freq.to(model.rope.inv_freq.device), model.rope.inv_freq)
torch.testing.assert_close(inv_freq_by_hand(5e5, 128, LLAMA31_ROPE_SCALING),  # the scaled branch, checked
                           rope_inv_freq(rope_config(5e5, 128, rope_scaling=dict(LLAMA31_ROPE_SCALING))))
angles = torch.outer(torch.arange(P).float(), inv_freq)  # [P, d/2]
cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(model.device)  # [P, d]: dims i and i + d/2 share
sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(model.device)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """x [B P heads d] rotated by position: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos[:, None] + rotated_half * sin[:, None]).to(x.dtype)


rot_q, rot_k = rotate(q), rotate(k)
show_shapes(inv_freq=inv_freq, cos=cos, rot_q=rot_q, rot_k=rot_k)
torch.testing.assert_close(rot_q, cache["rot_q", 0])
torch.testing.assert_close(rot_k, cache["rot_k", 0])

# %% [markdown]
# ### Attention
# Grouped-query scores (query head `h` reads KV head `h // G`), scaled by `1/√d`, future keys `−inf`,
# softmax in float32, weighted sum of values, then `o_proj` back to `D` (notebook 04).

# %%
# NBVAL_CHECK_OUTPUT
def attention(rot_q: torch.Tensor, rot_k: torch.Tensor, v: torch.Tensor, o_proj: torch.Tensor):
    """(attn_out [B P D], pattern [B H P P]) from rotated queries/keys and values."""
    n_pos = rot_q.shape[1]
    q_grouped = rearrange(rot_q, "b p (k g) d -> b k g p d", k=K)
    scores = einsum(q_grouped, rot_k, "b k g p d, b t k d -> b k g p t") / math.sqrt(d)
    future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).triu(1)
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1, dtype=torch.float32).to(v.dtype)
    z = einsum(pattern, v, "b k g p t, b t k d -> b p k g d")
    attn_out = rearrange(z, "b p k g d -> b p (k g d)") @ o_proj.T
    return attn_out, rearrange(pattern, "b k g p t -> b (k g) p t")


attn_out, pattern = attention(rot_q, rot_k, v, block.attn.o_proj.weight)
show_shapes(pattern=pattern, attn_out=attn_out)
torch.testing.assert_close(pattern, cache["pattern", 0])
torch.testing.assert_close(attn_out, cache["attn_out", 0])

# %%
viz.attention_pattern(pattern[0, 0], labels, title="layer 0, head 0 (computed by hand)", figsize=(4.6, 3.6))

# %% [markdown]
# ### Residual, then the MLP, then the residual again
# The block never overwrites the residual stream: it *adds* the attention output, then the MLP output.
# The MLP reads its own RMSNorm of the updated stream (notebook 05).

# %%
# NBVAL_CHECK_OUTPUT
def mlp(h: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    return (F.silu(h @ gate_w.T) * (h @ up_w.T)) @ down_w.T


resid_mid = x + attn_out
h2 = rms_norm(resid_mid, block.ln2.weight, eps)
mlp_out = mlp(h2, block.mlp.gate_proj.weight, block.mlp.up_proj.weight, block.mlp.down_proj.weight)
resid_post = resid_mid + mlp_out
show_shapes(resid_mid=resid_mid, h2=h2, mlp_out=mlp_out, resid_post=resid_post)
torch.testing.assert_close(resid_mid, cache["resid_mid", 0])
torch.testing.assert_close(mlp_out, cache["mlp_out", 0])
torch.testing.assert_close(resid_post, cache["resid_post", 0])

# %% [markdown]
# ## 3. All layers, then the prediction
#
# The same eleven lines per layer, with that layer's weights. After the last block: the final RMSNorm and
# the unembedding `[V, D]` (in SmolLM2 it *is* the embedding matrix: tied weights; Llama 3 8B has its own).

# %%
def block_by_hand(x: torch.Tensor, layer: int, eps: float = cfg.rms_norm_eps) -> torch.Tensor:
    b = model.blocks[layer]
    h = rms_norm(x, b.ln1.weight, eps)
    q = rearrange(h @ b.attn.q_proj.weight.T, "b p (h d) -> b p h d", h=H)
    k = rearrange(h @ b.attn.k_proj.weight.T, "b p (k d) -> b p k d", k=K)
    v = rearrange(h @ b.attn.v_proj.weight.T, "b p (k d) -> b p k d", k=K)
    attn_out, _ = attention(rotate(q), rotate(k), v, b.attn.o_proj.weight)
    x = x + attn_out
    h = rms_norm(x, b.ln2.weight, eps)
    return x + mlp(h, b.mlp.gate_proj.weight, b.mlp.up_proj.weight, b.mlp.down_proj.weight)


def forward_by_hand(tokens: torch.Tensor, eps: float = cfg.rms_norm_eps) -> tuple[torch.Tensor, list]:
    """(logits [B P V], the residual after the embedding and after each block)."""
    x = model.embed.weight[tokens]
    residuals = [x]
    for layer in range(cfg.num_hidden_layers):
        x = block_by_hand(x, layer, eps)
        residuals.append(x)
    return rms_norm(x, model.ln_final.weight, eps) @ model.unembed.weight.T, residuals


# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    our_logits, residuals = forward_by_hand(tokens)
show_shapes(final_residual=residuals[-1], W_U=model.unembed.weight, logits=our_logits)
print("unembedding tied to the embedding:", model.unembed.weight is model.embed.weight)
print(f"max |our logits - package logits| = {fmt((our_logits - logits).abs().max(), 3)} (logits span ±{logits.abs().max():.0f})")

# %%
torch.testing.assert_close(our_logits, logits, **TOL)
for layer in (0, cfg.num_hidden_layers // 2, cfg.num_hidden_layers - 1):
    torch.testing.assert_close(residuals[layer + 1], cache["resid_post", layer], **TOL)

# %% [markdown]
# The last position's logits are the prediction for the token after the prompt:

# %%
# NBVAL_CHECK_OUTPUT
next_token = int(our_logits[0, -1].argmax())
top = analysis.top_k_tokens(our_logits[0, -1], tok, k=8)
print(f"{prompt!r} -> {tok.decode([next_token])!r} (id {next_token}, p = {top.probs[0]:.2f})")
assert next_token == int(logits[0, -1].argmax())

# %%
viz.topk_bars(top.strings, top.probs, highlight=0, title=f"next token after {prompt!r}")

# %% [markdown]
# Every position predicts the token after it, so the same forward scores the prompt itself: the loss of
# each token given the ones before, `−log p(token | prefix)`, the number training minimises. The first
# token has no prefix, so no loss; the hand-written log-softmax is checked against `F.cross_entropy`.

# %%
# NBVAL_CHECK_OUTPUT
log_probs = our_logits[0].float().log_softmax(-1)  # [P, V]
next_ids = tokens[0, 1:]
loss = torch.full((P,), float("nan"))
loss[1:] = -log_probs[:-1].gather(-1, next_ids[:, None])[:, 0].cpu()  # position p: the loss of token p
torch.testing.assert_close(loss[1:], F.cross_entropy(logits[0, :-1].float(), next_ids, reduction="none").cpu(), **TOL)
print("loss of each prompt token (nats):", fmt(loss, 2))

# %% [markdown]
# `TokenValuesView` colours the text by a per-token value in the browser (here the loss, and the probability
# `exp(−loss)` it came from); hover a token for both.

# %%
# NBVAL_IGNORE_OUTPUT
prompt_loss = TokenValuesView(labels, {"loss (nats)": loss, "p(token | prefix)": (-loss).exp()})
prompt_loss

# %%
probe = TokenValuesView(labels, {"loss (nats)": loss, "p(token | prefix)": (-loss).exp()})
probe.channel = "p(token | prefix)"  # a second view: the one shown above keeps its channel
torch.testing.assert_close(torch.from_numpy(probe.arrays["loss (nats)"]), loss, equal_nan=True)
assert prompt_loss.channel == "loss (nats)" and probe.status.endswith("hover a token for every channel")

# %% [markdown]
# How the residual stream grows through the layers, per position (the first position stands out; notebook
# 07 measures by how much):

# %%
norms = torch.stack(residuals)[:, 0].float().norm(dim=-1)  # [L+1, P]
viz.residual_norms(norms, labels, layer_labels=["embed"] + [str(l) for l in range(cfg.num_hidden_layers)], title="‖residual‖: the embedding, then after each block", figsize=(5.5, 5.8))

# %% [markdown]
# ## 4. Common mistakes, measured
#
# ### `rms_norm_eps = 1e-6` instead of the checkpoint's value
# The original LLaMA used `1e-6`; Llama 2, Llama 3 and SmolLM2 use `1e-5`, and many libraries default to
# `1e-6`. Copying the wrong constant raises no error. How much does it change? The eps only matters where
# the mean square is small compared with it.

# %%
# NBVAL_CHECK_OUTPUT
wrong_eps = 1e-6 if cfg.rms_norm_eps != 1e-6 else 1e-5
with torch.no_grad():
    wrong_logits, _ = forward_by_hand(tokens, eps=wrong_eps)
delta = (wrong_logits - our_logits).abs().max()
kl = F.kl_div(wrong_logits[0, -1].float().log_softmax(-1), our_logits[0, -1].float().log_softmax(-1), log_target=True, reduction="sum")
print(f"eps {wrong_eps} instead of {cfg.rms_norm_eps}: same next token:", int(wrong_logits[0, -1].argmax()) == next_token)
print("max |Δlogit| above the 1e-4 parity tolerance:", bool(delta > 1e-4))

# %%
worst_position = int((wrong_logits - our_logits).abs().amax(-1).argmax())
print(f"max |Δlogit| = {delta:.3f} (at position {worst_position}, {labels[worst_position]!r}); KL at the last position = {kl:.1e} nats")
scales = torch.cat([cache[f"blocks.{l}.{norm}.hook_scale"].flatten() for l in range(cfg.num_hidden_layers) for norm in ("ln1", "ln2")])
smallest_mean_square = scales.min() ** 2 - cfg.rms_norm_eps
print(f"smallest mean square entering a norm: {smallest_mean_square:.1e} (eps is {cfg.rms_norm_eps}), "
      f"{smallest_mean_square / cfg.rms_norm_eps:.0f}× eps")
assert smallest_mean_square > 100 * cfg.rms_norm_eps and 1e-4 < delta < 0.1

# %% [markdown]
# Small: every mean square entering a norm is hundreds of times larger than 1e-5 (above), so the wrong eps
# barely shifts the logits, just enough to break an exact comparison against a reference
# implementation (compare `delta` with the 1e-4 tolerance above). That is exactly why this bug survives: it
# only shows as a mysterious mismatch in a parity test.
#
# ### A doubled BOS
# Prepending `<|begin_of_text|>` (here SmolLM2's BOS) when the text or the chat template already has one
# gives the model a sequence it never saw in training. The first token acts as the attention sink
# (notebook 04), and a second one changes what every later position attends to.

# %%
# NBVAL_CHECK_OUTPUT
bos = tokens[0, 0].item()
doubled = torch.cat([torch.tensor([[bos]], device=tokens.device), tokens], dim=1)
print("doubled BOS:", tok.token_strings(doubled[0].tolist()))
with torch.no_grad():
    doubled_logits = model(doubled)
p_right = logits[0, -1].float().softmax(-1)
p_doubled = doubled_logits[0, -1].float().softmax(-1)
print(f"p({tok.decode([next_token])!r}): {p_right[next_token]:.2f} with one BOS, {p_doubled[next_token]:.2f} with two")
kl_bos = (p_right * (p_right.log() - p_doubled.log())).sum()
print(f"KL(one BOS || two BOS) at the last position = {fmt(kl_bos, 2)} nats")

# %%
top_doubled = analysis.top_k_tokens(doubled_logits[0, -1], tok, k=8)
viz.topk_bars(top_doubled.strings, top_doubled.probs, highlight=tok.token_strings([next_token])[0], title="next token, BOS doubled")

# %% [markdown]
# `model.to_tokens(text)` and `generate` prepend the BOS exactly once, also when the text already starts
# with the BOS token's text.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `final_logits(resid)`: the logits from the last block's output `[B P D]` (final
# RMSNorm, then the unembedding). The check compares with the package's `ln_final` and `unembed`.

# %%
# NBVAL_CHECK_OUTPUT
def final_logits(resid: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_final = lambda resid: model.unembed(model.ln_final(resid))
check_exercise(final_logits, package_final, cache["resid_post", cfg.num_hidden_layers - 1])

# %% solution
# Solution to exercise 1: final_logits
# NBVAL_CHECK_OUTPUT
def final_logits_solution(resid: torch.Tensor) -> torch.Tensor:
    return rms_norm(resid, model.ln_final.weight, cfg.rms_norm_eps) @ model.unembed.weight.T


check_exercise(final_logits_solution, package_final, cache["resid_post", cfg.num_hidden_layers - 1])

# %% [markdown]
# **Exercise 2.** Write `block_7(x)`, one whole block (layer 7) from `rms_norm`, `rotate`, `attention` and
# `mlp` defined above and the weights in `model.blocks[7]`. The check compares with the package's block,
# called with the RoPE tables of positions `0..P−1`.

# %%
# NBVAL_CHECK_OUTPUT
def block_7(x: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_cos, package_sin = model.rope(0, P)
package_block_7 = lambda x: model.blocks[7](x, package_cos, package_sin)
check_exercise(block_7, package_block_7, cache["resid_pre", 7], atol=TOL["atol"], rtol=TOL["rtol"])

# %% solution
# Solution to exercise 2: block_7
# NBVAL_CHECK_OUTPUT
def block_7_solution(x: torch.Tensor) -> torch.Tensor:
    b = model.blocks[7]
    h = rms_norm(x, b.ln1.weight, cfg.rms_norm_eps)
    q = rearrange(h @ b.attn.q_proj.weight.T, "b p (h d) -> b p h d", h=H)
    k = rearrange(h @ b.attn.k_proj.weight.T, "b p (k d) -> b p k d", k=K)
    v = rearrange(h @ b.attn.v_proj.weight.T, "b p (k d) -> b p k d", k=K)
    x = x + attention(rotate(q), rotate(k), v, b.attn.o_proj.weight)[0]
    h = rms_norm(x, b.ln2.weight, cfg.rms_norm_eps)
    return x + mlp(h, b.mlp.gate_proj.weight, b.mlp.up_proj.weight, b.mlp.down_proj.weight)


check_exercise(block_7_solution, package_block_7, cache["resid_pre", 7], atol=TOL["atol"], rtol=TOL["rtol"])

# %% [markdown]
# ## What to remember
# - `x = E[tokens]`; per layer `x += attn(norm1(x))`, `x += mlp(norm2(x))`; `logits = norm(x) W_Uᵀ`.
# - Attention: q/k/v projections, RoPE on q and k, GQA scores `/√d`, causal `−inf`, float32 softmax,
#   `pattern · v`, `o_proj`. MLP: `down(silu(gate) · up)`.
# - About eighty lines reproduce the package's logits to float32 rounding: the architecture is small; the
#   traps (eps, BOS, RoPE layout, softmax precision) are in the details.
