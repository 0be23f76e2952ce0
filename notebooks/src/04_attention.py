# %% [markdown]
# # 04 · Attention, head by head
#
# Attention is the only place where one position reads another. Everything a Llama model knows about
# word order and context flows through it, and most of its numerical traps live here too: the scale, the
# causal mask, the softmax precision and grouped-query attention's shared key/value heads.
#
# **You will learn:**
# - where queries, keys and values come from, with their shapes (`B P H d` and `B P K d`);
# - grouped-query attention: `H` query heads in `K` groups of `G = H/K`, each group reading **one** key/value
#   head, computed with an einsum over a group axis (no copy of K/V per query head);
# - why scores are scaled by `1/√d`, why the causal mask is `−inf`, and why the softmax runs in float32
#   (the common mistake: softmax in bf16, measured);
# - to read every head's pattern of a layer, and to map all heads at once by entropy and by
#   attention-sink mass;
# - to re-derive one layer's attention output from its inputs and check it against the package.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (a trained Llama-architecture model:
# 30 layers, 9 query heads, 3 key/value heads, head dim 64). With `LLAMA3_LAB_WEIGHTS` pointing at a Llama 3
# checkpoint and a CUDA GPU, the same cells run Llama 3 (32 query heads, 8 KV heads, head dim 128) on CUDA in
# bf16; checked outputs are those of SmolLM2.

# %%
import math

import torch
from einops import einsum, rearrange

from llama3_lab import analysis, viz
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import AttentionView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
H, K, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
G = H // K

# %% [markdown]
# A short prompt with a repetition in it, so that some heads have something obvious to do (look back at
# the previous token, or at what followed the same words last time). `to_tokens` prepends the BOS token
# once. We cache every intermediate of one forward: 13 tokens make a small cache.

# %%
# NBVAL_CHECK_OUTPUT
text = "The cat sat on the mat. The cat sat on the"
tokens = model.to_tokens(text)
labels = tok.token_strings(tokens[0].tolist())
logits, cache = model.run_with_cache(tokens)
print(len(labels), "tokens:", labels)
print(f"H={H} query heads, K={K} key/value heads, G=H/K={G}, d={d}, D={cfg.hidden_size}")

# %% [markdown]
# ## 1. Queries, keys and values
#
# Each layer normalizes the residual stream (`ln1`, notebook 02) and projects it three ways. The query
# projection has `H·d` outputs, one `d`-vector per query head; the key and value projections only `K·d`:
# grouped-query attention stores fewer key/value heads (3 instead of 9 here, 8 instead of 32 in Llama 3 8B),
# which divides the KV cache by `G` (notebook 09).
#
# The weights are stored `[out, in]` (PyTorch's `nn.Linear` convention), so `x @ W.T`. The split of the
# `H·d` outputs into heads is a reshape: `"b p (h d) -> b p h d"`, heads outermost.

# %%
# NBVAL_CHECK_OUTPUT
LAYER = 3
attn = model.blocks[LAYER].attn
x = cache[f"blocks.{LAYER}.ln1.hook_out"]  # the normalized residual: the attention input
q = rearrange(x @ attn.q_proj.weight.T, "b p (h d) -> b p h d", h=H)
k = rearrange(x @ attn.k_proj.weight.T, "b p (k d) -> b p k d", k=K)
v = rearrange(x @ attn.v_proj.weight.T, "b p (k d) -> b p k d", k=K)
show_shapes(
    x=x, W_q=attn.q_proj.weight, W_k=attn.k_proj.weight, W_v=attn.v_proj.weight, q=q, k=k, v=v
)

# %%
torch.testing.assert_close(q, cache["q", LAYER])
torch.testing.assert_close(k, cache["k", LAYER])
torch.testing.assert_close(v, cache["v", LAYER])

# %% [markdown]
# Queries and keys are then rotated by position (RoPE, notebook 03); values are not: *where* a token is
# changes who it matches, not what it says. We take the rotated versions from the cache.

# %%
# NBVAL_CHECK_OUTPUT
rot_q, rot_k = cache["rot_q", LAYER], cache["rot_k", LAYER]
show_shapes(rot_q=rot_q, rot_k=rot_k)

# %% [markdown]
# ## 2. Grouped-query attention: one einsum with a group axis
#
# Query head `h` reads key/value head `h // G`: heads `0..G-1` share KV head 0, and so on. The usual way to
# implement this (Meta's `repeat_kv`, Hugging Face's `repeat_kv`) copies every K/V head `G` times and then
# runs ordinary multi-head attention. There is no need to copy: split the query heads into a
# `(k g)` pair of axes and let the einsum broadcast the one K head over its `g` axis. That is what
# `llama3_lab` does.

# %%
# NBVAL_CHECK_OUTPUT
print("query head -> KV head:", {h: h // G for h in range(H)})
q_grouped = rearrange(rot_q, "b p (k g) d -> b k g p d", k=K)
keys = rearrange(rot_k, "b t k d -> b k t d")
raw_scores = einsum(q_grouped, keys, "b k g p d, b k t d -> b k g p t")
show_shapes(q_grouped=q_grouped, keys=keys, raw_scores=raw_scores)

# %% [markdown]
# The copying version gives the same numbers, with `G` times the key memory:

# %%
keys_repeated = keys.repeat_interleave(G, dim=1)  # [B H T d]: KV head k copied for heads kG..kG+G-1
scores_repeated = einsum(rearrange(rot_q, "b p h d -> b h p d"), keys_repeated, "b h p d, b h t d -> b h p t")
torch.testing.assert_close(rearrange(raw_scores, "b k g p t -> b (k g) p t"), scores_repeated)
print(f"keys: {keys.numel():,} numbers shared vs {keys_repeated.numel():,} repeated")

# %% [markdown]
# ## 3. Why divide by √d
#
# A score is a dot product of two `d`-vectors. If their entries are roughly independent with unit variance,
# the dot product has variance `d`: standard deviation 8 for `d = 64`, 11.3 for Llama 3's `d = 128`. Softmax
# of numbers that large is nearly one-hot, and its gradient nearly zero. Dividing by `√d` brings the
# scores back to unit scale whatever the head size. Random vectors show the law; the real scores are
# not unit-variance (training shaped them), but the scale is what the model was trained with, so it is part
# of the function.

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(0)
for dim in (16, 64, 128):
    a, b = torch.randn(2, 10_000, dim, generator=generator)
    dots = (a * b).sum(-1)
    print(f"d={dim:>3}: std of q·k {dots.std():6.2f}, after /√d {(dots / math.sqrt(dim)).std():5.2f}")

# %%
scale = 1 / math.sqrt(d)
scores = raw_scores * scale
assert attn.scale == scale

# %% [markdown]
# ## 4. The causal mask: −inf, before the softmax
#
# Position `p` may read positions `0..p` only: at training time the model predicts every next token in
# parallel, and seeing the future would be cheating. Setting the forbidden scores to `−inf` makes
# `exp(−inf) = 0` exactly, so the softmax renormalises over the allowed keys only. (Zeroing probabilities
# *after* the softmax instead leaves rows that no longer sum to 1.)

# %%
# NBVAL_CHECK_OUTPUT
P = tokens.shape[1]
future = torch.ones(P, P, dtype=torch.bool, device=scores.device).triu(diagonal=1)  # key t > query p
masked_scores = scores.masked_fill(future, float("-inf"))
masked_scores = rearrange(masked_scores, "b k g p t -> b (k g) p t")
print("mask, first 5 queries x 5 keys (1 = hidden):")
print(future[:5, :5].int())
show_shapes(masked_scores=masked_scores, package_scores=cache["attn_scores", LAYER])

# %%
torch.testing.assert_close(masked_scores, cache["attn_scores", LAYER])

# %% [markdown]
# ## 5. Softmax in float32, then the weighted sum of values
#
# The pattern is `softmax(scores)` over the keys, computed in float32 and cast back to the model's dtype.
# Each query's row is a probability distribution over the positions it may read; `z = pattern · v` mixes
# their value vectors, per head; `o_proj` maps the `H·d` concatenated head outputs back to `D`.

# %%
# NBVAL_CHECK_OUTPUT
pattern = masked_scores.softmax(dim=-1, dtype=torch.float32).to(masked_scores.dtype)
pattern_grouped = rearrange(pattern, "b (k g) p t -> b k g p t", k=K)
z = einsum(pattern_grouped, rearrange(v, "b t k d -> b k t d"), "b k g p t, b k t d -> b p k g d")
z = rearrange(z, "b p k g d -> b p (k g) d")
attn_out = rearrange(z, "b p h d -> b p (h d)") @ attn.o_proj.weight.T
show_shapes(pattern=pattern, z=z, attn_out=attn_out)
print("rows sum to 1:", fmt(pattern.float().sum(-1).min()), fmt(pattern.float().sum(-1).max()))

# %%
torch.testing.assert_close(pattern, cache["pattern", LAYER])
torch.testing.assert_close(z, cache["z", LAYER])
torch.testing.assert_close(attn_out, cache["attn_out", LAYER])

# %% [markdown]
# ### Common mistake: where bf16 hurts the softmax
#
# bf16 keeps 8 bits of mantissa: about 2-3 significant digits. Run this layer's softmax on bf16 scores and
# compare with float32; then find where the error comes from: a float32 softmax of the same bf16-rounded
# scores, cast back to bf16; the rounding of the scores alone; the rounding of the output alone; and a
# softmax written by hand in bf16 (exponentials and sum in bf16).

# %%
def errors(p: torch.Tensor) -> tuple[float, float]:
    """(max |p - p32|, max |row sum - 1|) of a pattern against the float32 softmax."""
    p = p.float()
    return (p - p32).abs().max().item(), (p.sum(-1) - 1).abs().max().item()


p32 = masked_scores.float().softmax(dim=-1)
bf16_scores = masked_scores.bfloat16()
candidates = {
    "softmax on bf16 scores": bf16_scores.softmax(dim=-1),
    "float32 softmax of bf16 scores -> bf16": bf16_scores.float().softmax(dim=-1).bfloat16(),
    "bf16 scores only (float32 out)": bf16_scores.float().softmax(dim=-1),
    "bf16 output only (float32 scores)": p32.bfloat16(),
    "hand-written in bf16": (lambda e: e / e.sum(-1, keepdim=True))((bf16_scores - bf16_scores.amax(-1, keepdim=True)).exp()),
}
measured = {name: errors(p) for name, p in candidates.items()}
for name, (abs_error, row_error) in measured.items():
    print(f"{name:40s} max |Δp| {abs_error:.4f}, rows sum to 1 ± {row_error:.4f}")
abs_error, row_error = measured["softmax on bf16 scores"]
assert abs_error > 1e-3 and row_error > 1e-4  # bf16 errors are visible at the third decimal
assert (p32.sum(-1) - 1).abs().max() < 1e-5
# PyTorch's softmax of a bf16 tensor computes in float32 inside: the same result, to one bf16 step at most
assert (candidates["softmax on bf16 scores"].float() - candidates["float32 softmax of bf16 scores -> bf16"].float()).abs().max() <= 2**-8
assert measured["bf16 scores only (float32 out)"][0] > measured["bf16 output only (float32 scores)"][0]
assert measured["bf16 output only (float32 scores)"][1] > 1e-4 > measured["bf16 scores only (float32 out)"][1]

# %% [markdown]
# The first two rows agree: PyTorch already computes the exponentials and their sum in float32 when it is
# given bf16, so the error is not in the softmax's arithmetic but in **rounding the scores going in** (the
# largest part of max |Δp| here) and **the probabilities coming out** (what breaks the row sums). A softmax
# written by hand in bf16 rounds its exponentials and sum as well (last row). Meta, Hugging Face and this
# package call the softmax in float32 (`scores.float()`, `dtype=torch.float32`); in a bf16 model the scores
# and the stored pattern are still bf16, so those two roundings remain: they are the price of bf16.
# %% [markdown]
# ## 6. Every head of a layer
#
# One grid, one colour scale shared by all panels; future keys are grey (masked, not "probability 0").
# In layer 3 the early queries put most of their attention on the first token (the *attention sink*: a head
# that has nothing to read puts its mass somewhere harmless); later queries split it between the first
# token and the first ` the` (position 5), a second resting place. Heads 7 and 8 spread their attention
# more widely.

# %%
viz.attention_heads_grid(cache["pattern", LAYER][0], labels, title=f"layer {LAYER}: all {H} heads")

# %% [markdown]
# Deeper, heads specialise. `analysis.previous_token_scores` measures, per head, the mean attention from
# each position to the one before it; the best previous-token head of the model:

# %%
# NBVAL_CHECK_OUTPUT
prev = analysis.previous_token_scores(cache)
best_layer, best_head = divmod(int(prev.argmax()), H)
print(f"previous-token head: layer {best_layer}, head {best_head}, score {prev.max():.2f}")

# %%
viz.attention_pattern(
    cache["pattern", best_layer][0, best_head],
    labels,
    title=f"layer {best_layer} head {best_head}: previous token",
    figsize=(5.2, 4.2),
)

# %% [markdown]
# ## 7. All heads at once: entropy and sink maps
#
# A `[layer, head]` map of one number per head finds the interesting ones in a glance.
# - **Entropy** `−Σ p log p` of each query's row, averaged over queries (nats): 0 means one key gets
#   everything, `log(p+1)` means uniform over the `p+1` visible keys.
# - **Sink mass**: the mean attention on the first token (queries 1..P−1; query 0 has no choice).
#
# Derive both for one head, check them against `llama3_lab.analysis`, then map every head.

# %%
# NBVAL_CHECK_OUTPUT
head = 0
rows = cache["pattern", LAYER][0, head].float()  # [Pq, Pk]
plogp = torch.where(rows > 0, rows * rows.clamp_min(1e-30).log(), torch.zeros_like(rows))
entropy_ours = -plogp.sum(-1).mean()
sink_ours = rows[1:, 0].mean()
entropy, sink = analysis.attention_entropy(cache), analysis.attention_sink_scores(cache)
torch.testing.assert_close(entropy_ours, entropy[LAYER, head])
torch.testing.assert_close(sink_ours, sink[LAYER, head])
show_shapes(entropy=entropy, sink=sink)
print(f"layer {LAYER} head {head}: entropy {entropy_ours:.3f} nats, sink mass {sink_ours:.3f}")

# %%
viz.head_score_heatmap(entropy, title="attention entropy (nats)", label="nats", figsize=(4.6, 5.2))

# %%
viz.head_score_heatmap(sink, title="attention on the first token", label="mass", vmin=0, vmax=1, figsize=(4.6, 5.2))

# %% [markdown]
# The two maps are largely mirror images (anti-correlated, −0.68 over all heads): low entropy mostly *means*
# "everything on the sink". In SmolLM2, from layer 12 on, heads put about two thirds of their attention on
# the BOS position; layers 0-2 and 10-11 hardly use the sink. A head that is both low-entropy **and**
# low-sink is doing something specific (like the previous-token head above).

# %%
# NBVAL_CHECK_OUTPUT
print("mean sink mass, layers 0-2:", fmt(sink[:3].mean(), 2), " layers 12-29:", fmt(sink[12:].mean(), 2))
print("correlation of entropy and sink mass over all heads:", fmt(torch.corrcoef(torch.stack([entropy.flatten(), sink.flatten()]))[0, 1], 2))
specific = (sink < 0.2) & (entropy < 0.5)
print("low-entropy, low-sink heads (layer, head):", specific.nonzero().tolist())

# %% [markdown]
# ## 8. Explore: any layer, any head, any query
#
# `AttentionView` takes the cache we already have (or a model and a prompt) and draws in the browser:
# hover a token to see where it attends (or, in column mode, what attends to it), click a token to select
# it as the query, and pick another head from the thumbnails of every head of the layer. Hovering needs no
# kernel round-trip, so long prompts stay responsive. In a static rendering (on GitHub, say) you see its
# current figure: the selected head's pattern.

# %%
# NBVAL_IGNORE_OUTPUT
explorer = AttentionView(cache, labels, layer=best_layer, head=best_head)
explorer

# %% [markdown]
# The view's state is plain attributes, so code can drive it (and CI checks it). The check drives a
# second view, so the one shown above keeps the previous-token head the code selected:

# %%
# NBVAL_CHECK_OUTPUT
probe = AttentionView(cache, labels, layer=best_layer, head=best_head)
probe.query = 9
row = probe.query_row()
torch.testing.assert_close(torch.from_numpy(row), cache["pattern", best_layer][0, best_head, 9, :10].float().cpu())
strongest = int(row.argmax())
print(f"query 9 {labels[9]!r} reads key {strongest} {labels[strongest]!r} with {row[strongest]:.2f}")
assert strongest == 8 and row[strongest] > 0.5  # the token just before it, with most of the mass
probe.layer = LAYER
assert probe.pattern().shape == (H, P, P)
assert (explorer.layer, explorer.head) == (best_layer, best_head)  # the one displayed is unchanged

# %% [markdown]
# The second ` cat` (position 9) in the previous-token head reads mostly ` The`, the token before it.
# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `causal_gqa_scores(rot_q, rot_k)`: from rotated queries `[B P H d]` and keys
# `[B P K d]`, return the scaled, causally masked scores `[B H P P]`, without copying K per query head.
# The check compares with the layer's `hook_attn_scores`.

# %%
# NBVAL_CHECK_OUTPUT
def causal_gqa_scores(rot_q: torch.Tensor, rot_k: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_scores = lambda rot_q, rot_k: cache["attn_scores", LAYER]
check_exercise(causal_gqa_scores, package_scores, rot_q, rot_k)

# %% solution
# Solution to exercise 1: causal_gqa_scores
# NBVAL_CHECK_OUTPUT
def causal_gqa_scores_solution(rot_q: torch.Tensor, rot_k: torch.Tensor) -> torch.Tensor:
    n_kv, head_dim, n_pos = rot_k.shape[2], rot_q.shape[-1], rot_q.shape[1]
    q = rearrange(rot_q, "b p (k g) d -> b k g p d", k=n_kv)
    s = einsum(q, rot_k, "b k g p d, b t k d -> b k g p t") / math.sqrt(head_dim)
    hidden = torch.ones(n_pos, n_pos, dtype=torch.bool, device=s.device).triu(1)
    return rearrange(s.masked_fill(hidden, float("-inf")), "b k g p t -> b (k g) p t")


check_exercise(causal_gqa_scores_solution, package_scores, rot_q, rot_k)

# %% [markdown]
# **Exercise 2.** Write `head_output(pattern, v)`: given the pattern `[B H P P]` and values `[B P K d]`,
# return `z` `[B P H d]`, each query head mixing the values of its KV head. The check compares with
# `hook_z`.

# %%
# NBVAL_CHECK_OUTPUT
def head_output(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_z = lambda pattern, v: cache["z", LAYER]
check_exercise(head_output, package_z, cache["pattern", LAYER], cache["v", LAYER])

# %% solution
# Solution to exercise 2: head_output
# NBVAL_CHECK_OUTPUT
def head_output_solution(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    grouped = rearrange(pattern, "b (k g) p t -> b k g p t", k=v.shape[2])
    z = einsum(grouped, v, "b k g p t, b t k d -> b p k g d")
    return rearrange(z, "b p k g d -> b p (k g) d")


check_exercise(head_output_solution, package_z, cache["pattern", LAYER], cache["v", LAYER])

# %% [markdown]
# ## What to remember
# - `q = x W_qᵀ` split into `H` heads of `d`; `k`, `v` into `K` heads; RoPE rotates `q` and `k`, never `v`.
# - GQA: query head `h` reads KV head `h // G`. Group the query heads (`"b p (k g) d -> b k g p d"`) and one
#   einsum does it without copying K/V.
# - `scores = q·k / √d`; future keys `−inf` *before* the softmax; softmax in float32; `z = pattern · v`;
#   `attn_out = concat(z) W_oᵀ`.
# - Many Llama heads dump attention on the first token (the sink); entropy and sink maps find the heads
#   that do something else.
