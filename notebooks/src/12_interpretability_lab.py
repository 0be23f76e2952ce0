# %% [markdown]
# # 12 · Interpretability lab
#
# The earlier notebooks showed *what* the model computes. This one asks *which parts matter for a given
# behaviour*, with the standard tools of mechanistic interpretability, each checked against a from-scratch
# computation:
#
# **You will learn:**
# - to find **previous-token** and **induction heads** by scoring every head's attention on repeated random
#   tokens, and to see the induction pattern (the "look at what came after this token last time" stripe);
# - **head ablation**: remove the top induction heads and watch the loss on the repeated half go up (and
#   compare with removing random heads, the control every ablation needs);
# - **activation patching** of the residual stream: with a clean and a corrupted prompt, paste clean
#   activations into the corrupted run one (layer, position) at a time, and map where the answer lives;
# - **direct logit attribution**: split the answer's logit difference into what each layer and each head
#   writes directly;
# - a **steering vector** that changes what the model writes (greedy, so the before/after is reproducible).
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (30 layers × 9 heads). With
# `LLAMA3_LAB_WEIGHTS` pointing at a Llama 3 checkpoint and a CUDA GPU, the same cells run Llama 3 in bf16
# (32 layers × 32 heads; the prompts are chosen to tokenise the same way in both vocabularies only for
# SmolLM2, so the patching cell checks its own lengths); checked outputs are those of SmolLM2.

# %%
import torch
from einops import einsum

from llama3_lab import analysis, viz
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import AttentionView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
L, H = cfg.num_hidden_layers, cfg.num_attention_heads

# %% [markdown]
# ## 1. Previous-token and induction heads
#
# An **induction head** completes patterns: having seen `... A B ... A`, it attends from the second `A` to
# the `B` that followed the first one and copies it. It is found by behaviour, not by looking: feed a
# sequence of random tokens twice (`[BOS, r_1..r_T, r_1..r_T]`). Nothing in the first half is predictable;
# everything in the second half is, by copying. An induction head's query at the second copy of `r_j`
# (position `T + j`) attends to position `j + 1`. Induction usually needs a **previous-token head** in an
# earlier layer (one that writes "the token before me was `A`" into each position), so we score those too:
# attention from position `i` to `i − 1`.

# %%
# NBVAL_CHECK_OUTPUT
T = 20
repeated = analysis.repeated_random_tokens(model, T, batch=1, seed=0)  # [1, 1 + 2T]
with torch.no_grad():
    repeated_logits, repeated_cache = model.run_with_cache(repeated, names_filter=lambda name: name.endswith("hook_pattern"))
show_shapes(tokens=repeated, pattern_layer_0=repeated_cache["pattern", 0])
print("first copy == second copy:", torch.equal(repeated[0, 1 : T + 1], repeated[0, T + 1 :]))

# %% [markdown]
# The two scores for one head from the pattern, then checked against `llama3_lab.analysis` for every head:

# %%
# NBVAL_CHECK_OUTPUT
layer, head = 18, 6
pattern = repeated_cache["pattern", layer][0, head]  # [P, P]
queries = torch.arange(T + 1, 2 * T + 1)  # the second copy
induction_ours = pattern[queries, queries - T + 1].mean()
previous_ours = pattern.diagonal(offset=-1).mean()
induction = analysis.induction_scores(repeated_cache, T)  # [L, H]
previous = analysis.previous_token_scores(repeated_cache)  # [L, H]
torch.testing.assert_close(induction_ours, induction[layer, head])
torch.testing.assert_close(previous_ours, previous[layer, head])
show_shapes(induction=induction, previous=previous)
print(f"layer {layer} head {head}: induction {induction_ours:.2f}, previous-token {previous_ours:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
def top_heads(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    return [divmod(int(i), scores.shape[1]) for i in scores.flatten().topk(k).indices]


induction_heads = top_heads(induction, 5)
print("top induction heads (layer, head):", induction_heads, fmt([induction[h] for h in induction_heads], 2))
print("top previous-token heads:", top_heads(previous, 5), fmt([previous[h] for h in top_heads(previous, 5)], 2))

# %% [markdown]
# The map: induction heads cluster in layers 17-18 (and 23); the previous-token heads sit earlier (layers 1-2,
# 11, 16), consistent with the two-step circuit.

# %%
viz.head_score_heatmap(induction, title="induction score (repeated random tokens)", label="attention", vmin=0, vmax=1, annotate=False, figsize=(4.6, 5.2))

# %%
viz.head_score_heatmap(previous, title="previous-token score", label="attention", vmin=0, vmax=1, annotate=False, figsize=(4.6, 5.2))

# %% [markdown]
# The best induction head's pattern: in the second half, a stripe one position right of the diagonal
# `T` back (each query reads the token *after* its earlier occurrence).

# %%
best = induction_heads[0]
repeated_labels = tok.token_strings(repeated[0].tolist())
viz.attention_pattern(repeated_cache["pattern", best[0]][0, best[1]], repeated_labels,
                      title=f"induction head {best[0]}.{best[1]}", figsize=(6.2, 5.4))

# %% [markdown]
# And what it buys the model: the loss per token. In the first half the next token is random, so the loss is
# high (above `ln V` ≈ 10.8 nats, the loss of a uniform guess: the model confidently expects ordinary text);
# in the second half the tokens can be copied, and the loss drops by more than half.

# %%
# NBVAL_CHECK_OUTPUT
def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B, P-1]: −log p(token t+1 | tokens ≤ t)."""
    log_probs = logits[:, :-1].float().log_softmax(-1)
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


losses = token_losses(repeated_logits, repeated)
first_half, second_half = losses[:, :T].mean(), losses[:, T:].mean()
print(f"mean loss, first copy: {first_half:.1f} nats; second copy: {second_half:.1f} nats")

# %%
viz.token_strip(repeated_labels[1:], losses[0], label="loss (nats)", chars_per_row=90,
                title="loss of each token given the ones before: random, then copied")

# %% [markdown]
# ## 2. Head ablation: are those heads necessary?
#
# Ablating a head replaces what it writes. **Zero ablation** writes nothing; **mean ablation** writes its
# average output, which keeps the residual stream's usual statistics and is the fairer test. Either way the
# question is: how much worse does the second-half loss get without the top 5 induction heads, compared
# with 5 random heads (the control: removing *any* 5 heads costs something)?
#
# First, what an ablation is, from scratch: a head's output is `z_h · W_O[:, h]`, and `attn_out` is the sum
# over heads. Zeroing head `h`'s `z` removes exactly its term:

# %%
layer, head = best
with torch.no_grad():
    _, normal = model.run_with_cache(repeated, names_filter=[f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"])
    with analysis.ablate_heads(model, [best]):
        _, ablated = model.run_with_cache(repeated, names_filter=[f"blocks.{layer}.hook_attn_out"])
per_head = analysis.head_outputs(model, normal, layer)  # [B, P, H, D]
show_shapes(z=normal["z", layer], per_head=per_head, attn_out=normal["attn_out", layer])
torch.testing.assert_close(per_head.sum(2), normal["attn_out", layer], atol=1e-4, rtol=1e-4)
torch.testing.assert_close(ablated["attn_out", layer], normal["attn_out", layer] - per_head[:, :, head], atol=1e-4, rtol=1e-4)

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(1)
random_heads = [divmod(int(i), H) for i in torch.randperm(L * H, generator=generator)[:5]]
z_names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
other = analysis.repeated_random_tokens(model, T, batch=4, seed=1)  # fresh tokens for the means
means = analysis.mean_activations(model, other, z_names)

results = {}
for label, heads in (("top-5 induction", induction_heads), ("5 random", random_heads)):
    for kind in ("zero", "mean"):
        with torch.no_grad(), analysis.ablate_heads(model, heads, kind=kind, means=means):
            results[label, kind] = token_losses(model(repeated), repeated)[:, T:].mean()
print("random heads:", random_heads)
print(f"second-copy loss, nothing ablated: {second_half:.2f}")
for (label, kind), loss in results.items():
    print(f"  {kind} ablation of {label} heads: {loss:.2f}")
assert results["top-5 induction", "mean"] > results["5 random", "mean"]
assert results["top-5 induction", "mean"] - second_half > 1 > abs(results["5 random", "mean"] - second_half)
assert results["top-5 induction", "mean"] < first_half - 2  # still copying in part without them

# %% [markdown]
# Removing the five induction heads costs far more than removing five random heads (which barely move the
# loss): the model relies on them for copying. Yet with them ablated the loss stays well below the first
# copy's, so the model still copies in part: other heads can do some of the work. That shows
# **redundancy** (the circuit has backups), not whether the induction heads would be sufficient on their own,
# which ablating them cannot tell.
#
# ## 3. Activation patching: where does the answer live?
#
# Two prompts of the same length in tokens that differ in one fact:

# %%
# NBVAL_CHECK_OUTPUT
clean, corrupted = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
clean_ids, corrupted_ids = model.to_tokens(clean), model.to_tokens(corrupted)
assert clean_ids.shape == corrupted_ids.shape, "pick prompts with equal token counts for this tokenizer"
paris, rome = tok.encode(" Paris")[0], tok.encode(" Rome")[0]
metric = analysis.logit_diff_metric(paris, rome)  # logit(Paris) − logit(Rome) at the last position
with torch.no_grad():
    clean_diff, corrupted_diff = float(metric(model(clean_ids))), float(metric(model(corrupted_ids)))
clean_labels = tok.token_strings(clean_ids[0].tolist())
print(clean_labels)
print(tok.token_strings(corrupted_ids[0].tolist()))
print(f"logit(' Paris') − logit(' Rome'): clean {clean_diff:.2f}, corrupted {corrupted_diff:.2f}")

# %% [markdown]
# Run the corrupted prompt, but replace the residual stream at one (layer, position) by its value in the
# clean run. If the metric swings back towards the clean value, the information that decides Paris vs Rome
# is carried *there*. One forward per cell; every third layer keeps it fast (100 forwards).
#
# One cell by hand first, checked against `analysis.patch_resid`:

# %%
layers = list(range(0, L, 3))
name = "blocks.9.hook_resid_pre"
with torch.no_grad():
    _, clean_cache = model.run_with_cache(clean_ids)


def paste_clean(resid: torch.Tensor, hook) -> torch.Tensor:
    resid = resid.clone()
    resid[:, 3] = clean_cache[name][:, 3]  # position 3: 'iffel' / 'osse'
    return resid


with torch.no_grad():
    ours = float(metric(model.run_with_hooks(corrupted_ids, [(name, paste_clean)])))
package = analysis.patch_resid(model, clean, corrupted, metric, layers=[9], positions=[3])
torch.testing.assert_close(torch.tensor([[ours]]), package)
print(f"patching resid_pre of layer 9 at position 3: {ours:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
patched = analysis.patch_resid(model, clean, corrupted, metric, layers=layers)  # [layers, P]
show_shapes(patched=patched)
restored = (patched - corrupted_diff) / (clean_diff - corrupted_diff)  # 0 = corrupted, 1 = clean
print("fraction restored at the last position, by layer:", fmt(restored[:, -1], 2))
print("fraction restored at 'iffel' (position 3), by layer:", fmt(restored[:, 3], 2))
print("fraction restored at ' Tower' (position 4), by layer:", fmt(restored[:, 4], 2))
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert clean_labels[3:5] == ["iffel", " Tower"]
    early, late = [i for i, l in enumerate(layers) if l <= 21], [i for i, l in enumerate(layers) if l >= 24]
    assert (restored[early, 3] > 0.5).all() and (restored[early, 3] > restored[early, 4]).all()  # mostly 'iffel'
    assert (restored[early, 4] > 0.1).all()  # partly ' Tower'
    assert (restored[early, -1].abs() < 0.1).all() and (restored[late, -1] > 0.5).all()  # then the last position
    assert (restored[late, 3:5].abs() < 0.1).all()  # and the subject no longer matters

# %% [markdown]
# The map (there is no layer × position heatmap in `viz`, so the layer × head heatmap is reused with the
# columns relabelled as positions). Up to layer 21 the answer is carried by the subject: mostly by
# `iffel` (position 3; patching it alone restores most of the difference), partly by ` Tower`. By layer 24 it has moved
# to the last position, where the prediction is made, and patching the subject no longer does anything.
# That is the picture of factual recall found in larger models: the fact is assembled on the subject's
# tokens, then moved by attention to the end.

# %%
figure = viz.head_score_heatmap(restored, title="activation patching: fraction of the logit difference restored",
                                center=0, label="fraction restored", layer_labels=[f"{l} pre" for l in layers], figsize=(6.4, 4.2))
patch_axes = figure.axes[0]
viz.set_token_ticks(patch_axes, "x", clean_labels, rotation=45)
patch_axes.set_xlabel("position (clean token)")
figure

# %% [markdown]
# ## 4. Direct logit attribution
#
# The final residual is a sum: the embedding plus every attention output and every MLP output. The logit
# difference is a linear function of it *given the final norm's scale* (the RMS `s` of the final residual,
# cached by the model as `ln_final.hook_scale`):
# `logit(Paris) − logit(Rome) = (w ⊙ (W_U[Paris] − W_U[Rome])) · x / s`. So it splits exactly into one term
# per component: what that component writes *directly* into the answer (not what it causes later layers to
# write).

# %%
# NBVAL_CHECK_OUTPUT
components, component_labels = analysis.decompose_resid(clean_cache, pos=-1)  # [1 + 2L, B, 1, D]
direction = (model.unembed.weight[paris] - model.unembed.weight[rome]) * model.ln_final.weight  # [D]
scale = clean_cache["ln_final.hook_scale"][:, -1, 0]  # [B]
ours = einsum(components[:, :, 0], direction, "c b d, d -> c b") / scale
dla, labels = analysis.direct_logit_attribution(model, clean_cache, paris, against=rome)
torch.testing.assert_close(ours, dla, atol=1e-4, rtol=1e-4)
torch.testing.assert_close(dla.sum(0), torch.tensor([clean_diff]), atol=1e-3, rtol=1e-4)
show_shapes(components=components, direction=direction, dla=dla)
print(f"sum of direct attributions {dla.sum():.2f} = the logit difference {clean_diff:.2f}")
top = dla[:, 0].abs().topk(6).indices
print("largest components:", {labels[i]: fmt(dla[i, 0], 2) for i in top.tolist()})

# %% [markdown]
# Per layer, attention and MLP side by side (the embedding's term, row 0, is left out):

# %%
per_layer = torch.stack([dla[1::2, 0], dla[2::2, 0]], dim=1)  # [L, 2]: attention, MLP
layer_figure = viz.head_score_heatmap(per_layer, title="direct logit attribution, Paris − Rome", center=0,
                                      label="logit difference", figsize=(3.4, 6.0))
viz.set_token_ticks(layer_figure.axes[0], "x", ["attn", "MLP"], rotation=0)
layer_figure.axes[0].set_xlabel("")
layer_figure

# %% [markdown]
# Layers 23-26 write most of the answer directly: the MLPs of layers 24-26 and the attention of layer 23,
# while the last MLP pushes back a little. Attention per head (`head_logit_attribution`, each head's `z`
# through its slice of `W_O`; they sum to the attention rows above) shows that layer 23's share is mostly
# one head:

# %%
# NBVAL_CHECK_OUTPUT
per_head_dla = analysis.head_logit_attribution(model, clean_cache, paris, against=rome)[..., 0]  # [L, H]
torch.testing.assert_close(per_head_dla.sum(1), dla[1::2, 0], atol=1e-4, rtol=1e-4)
print("heads writing most for Paris:", top_heads(per_head_dla, 3), fmt([per_head_dla[h] for h in top_heads(per_head_dla, 3)], 2))
print("heads writing most for Rome:", top_heads(-per_head_dla, 3), fmt([per_head_dla[h] for h in top_heads(-per_head_dla, 3)], 2))

# %%
viz.head_score_heatmap(per_head_dla, title="direct logit attribution per head (Paris − Rome)", center=0,
                       label="logit difference", annotate=False, figsize=(4.6, 5.2))

# %% [markdown]
# ## 5. A steering vector
#
# If a direction in the residual stream encodes a concept, adding it should change what the model writes.
# The "activation addition" recipe: run two contrasting prompts, take the difference of their residuals at
# one layer, and add a multiple of it during generation. We average the difference over the prompts'
# positions (both are 10 tokens; the BOS position is identical and skipped); at the last position it is
# exactly `analysis.steering_vector`.

# %%
# NBVAL_CHECK_OUTPUT
positive, negative = "I love it. It is wonderful and amazing", "I hate it. It is terrible and awful"
STEER_LAYER = 6
hook_name = f"blocks.{STEER_LAYER}.hook_resid_pre"
with torch.no_grad():
    _, plus = model.run_with_cache(positive, names_filter=hook_name)
    _, minus = model.run_with_cache(negative, names_filter=hook_name)
difference = plus[hook_name][0] - minus[hook_name][0]  # [P, D]
torch.testing.assert_close(difference[-1], analysis.steering_vector(model, positive, negative, hook_name))
vector = difference[1:].mean(0)  # [D]
show_shapes(difference=difference, vector=vector)

# %% [markdown]
# The steering hook adds `scale · vector` at every position of `resid_pre` of layer 6:

# %%
prompt = "I think dogs are"
SCALE = 2.0
with torch.no_grad():
    _, plain = model.run_with_cache(prompt, names_filter=hook_name)
    with analysis.steering(model, hook_name, vector, scale=SCALE):
        _, steered = model.run_with_cache(prompt, names_filter=hook_name)
torch.testing.assert_close(steered[hook_name], plain[hook_name] + SCALE * vector)

# %%
# NBVAL_CHECK_OUTPUT
before = model.generate(prompt, max_new_tokens=20, temperature=0)
with analysis.steering(model, hook_name, vector, scale=SCALE):
    after = model.generate(prompt, max_new_tokens=20, temperature=0)
with analysis.steering(model, hook_name, vector, scale=-SCALE):
    reversed_ = model.generate(prompt, max_new_tokens=20, temperature=0)
print("before:     ", repr(before))
print(f"+{SCALE:g} x love−hate:", repr(after))
print(f"−{SCALE:g} x love−hate:", repr(reversed_))

# %% [markdown]
# Which next tokens the vector promotes most at the end of the prompt (change in log-probability):

# %%
with torch.no_grad():
    base_logprobs = model(model.to_tokens(prompt))[0, -1].float().log_softmax(-1)
    with analysis.steering(model, hook_name, vector, scale=SCALE):
        steered_logprobs = model(model.to_tokens(prompt))[0, -1].float().log_softmax(-1)
shift = steered_logprobs - base_logprobs
promoted = shift.topk(10).indices
viz.topk_bars(tok.token_strings(promoted.tolist()), shift[promoted], xlabel="Δ log-probability",
              title=f"tokens promoted by +{SCALE:g} x (love − hate) at layer {STEER_LAYER}")

# %% [markdown]
# Steering is blunt: too large a scale (try 4 or 8) pushes the residual off the model's distribution and
# the text degrades into repetition before it gets "more positive".
#
# ## 6. Explore the induction heads
#
# `AttentionView` on the repeated-token cache, opened on the top induction head: hover the tokens of the
# second half to watch each query read the token after its earlier copy; compare with the previous-token
# heads (layer 16 head 0, layer 2 head 1).

# %%
# NBVAL_IGNORE_OUTPUT
explorer = AttentionView(repeated_cache, repeated_labels, layer=best[0], head=best[1])
explorer

# %%
# NBVAL_CHECK_OUTPUT
shown_query = explorer.query
probe = AttentionView(repeated_cache, repeated_labels, layer=best[0], head=best[1])  # the shown one stays put
probe.query = T + 5  # the second copy of r_5
row = probe.query_row()
strongest = int(row[1:].argmax()) + 1  # the BOS sink aside
print(f"query {T + 5}: most attention (BOS aside) on key {strongest}, the token after r_5's first copy: {strongest == 6}")
print(f"attention on key 6: {row[6]:.2f}, on BOS: {row[0]:.2f}")
assert strongest == 6
assert explorer.query == shown_query  # the view displayed above is unchanged

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `induction_score(pattern, repeat_len)`: from one layer's patterns `[B, H, P, P]` on
# `[BOS, r, r]`, return each head's mean attention from the second copy's positions to the token after the
# first occurrence, `[H]` (averaged over the batch). The check compares with `analysis.induction_scores`.

# %%
# NBVAL_CHECK_OUTPUT
def induction_score(pattern: torch.Tensor, repeat_len: int) -> torch.Tensor:
    raise NotImplementedError  # your code here


def package_induction(pattern, repeat_len):
    return induction[best[0]]


check_exercise(induction_score, package_induction, repeated_cache["pattern", best[0]], T)

# %% solution
# Solution to exercise 1: induction_score
# NBVAL_CHECK_OUTPUT
def induction_score_solution(pattern: torch.Tensor, repeat_len: int) -> torch.Tensor:
    second_copy = torch.arange(repeat_len + 1, 2 * repeat_len + 1)
    return pattern[..., second_copy, second_copy - repeat_len + 1].mean(-1).mean(0)


check_exercise(induction_score_solution, package_induction, repeated_cache["pattern", best[0]], T)

# %% [markdown]
# **Exercise 2.** Direct logit attribution of one MLP: given the clean cache, a layer, and two token ids,
# return the MLP output's direct contribution to `logit(a) − logit(b)` at the last position (a tensor `[B]`).
# The check compares with the MLP row of `analysis.direct_logit_attribution`.

# %%
# NBVAL_CHECK_OUTPUT
def mlp_dla(cache, layer: int, a: int, b: int) -> torch.Tensor:
    raise NotImplementedError  # your code here


def package_mlp_dla(cache, layer, a, b):
    rows, names = analysis.direct_logit_attribution(model, cache, a, against=b)
    return rows[names.index(f"{layer}_mlp_out")]


check_exercise(mlp_dla, package_mlp_dla, clean_cache, 25, paris, rome)

# %% solution
# Solution to exercise 2: mlp_dla
# NBVAL_CHECK_OUTPUT
def mlp_dla_solution(cache, layer: int, a: int, b: int) -> torch.Tensor:
    mlp_out = cache["mlp_out", layer][:, -1]  # [B, D]
    direction = (model.unembed.weight[a] - model.unembed.weight[b]) * model.ln_final.weight
    return (mlp_out @ direction) / cache["ln_final.hook_scale"][:, -1, 0]


check_exercise(mlp_dla_solution, package_mlp_dla, clean_cache, 25, paris, rome, atol=1e-4, rtol=1e-4)

# %% [markdown]
# ## What to remember
# - Find heads by behaviour: on repeated random tokens, induction heads attend from the second copy of a
#   token to what followed its first copy; previous-token heads attend one back. Here: induction in layers
#   17-18, previous-token heads earlier.
# - Ablation tests necessity; always compare with a control (random heads), prefer mean ablation.
# - Activation patching with a clean/corrupted pair and a logit-difference metric localises information
#   by layer and position: here it sits on the subject, mostly on `iffel` (more than on the subject's last
#   token ` Tower`), up to layer 21, then moves to the final position.
# - Direct logit attribution splits the logit difference exactly into components (with the final norm's
#   scale held fixed); it measures direct effects only.
# - A difference of residuals is a steering vector; a small multiple changes the text, a large one breaks it.
