# %% [markdown]
# # 07 · The residual stream and the logit lens
#
# Every block *adds* to one running vector per position, the residual stream; nothing ever overwrites it.
# So the final vector is a sum of contributions we can take apart, and any intermediate vector can be read
# with the model's own output head to see what the model "would say" at that depth: the logit lens.
#
# **You will learn:**
# - that the residual stream is exactly the embedding plus every attention and MLP output (checked);
# - how its norm grows through the layers, and why the first position is an outlier;
# - how much each attention layer and each MLP writes, and how much of that goes *directly* into the
#   answer's logit (direct logit attribution);
# - the logit lens, derived and checked against `llama3_lab.analysis.logit_lens`, and the common mistake
#   of reusing the final layer's norm scale for every layer;
# - when the answer appears: the rank of ` Paris` after "The capital of France is", layer by layer.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (30 layers). With `LLAMA3_LAB_WEIGHTS`
# pointing at a Llama 3 checkpoint and a CUDA GPU, the same cells run Llama 3 on CUDA in bf16 (32 layers);
# checked outputs are SmolLM2's.

# %%
import torch
from matplotlib.figure import Figure

from llama3_lab import analysis, viz
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import LogitLensView, TokenValuesView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
L = cfg.num_hidden_layers

# %%
# NBVAL_CHECK_OUTPUT
prompt = "The capital of France is"
tokens = model.to_tokens(prompt)
labels = tok.token_strings(tokens[0].tolist())
with torch.no_grad():
    logits, cache = model.run_with_cache(tokens)
answer = tok.encode(" Paris")[0]
print(len(labels), "tokens:", labels)
print("model's next token:", repr(tok.decode([int(logits[0, -1].argmax())])), "| answer id", answer)

# %% [markdown]
# ## 1. A sum of writes
#
# `resid_post[l] = resid_pre[l] + attn_out[l] + mlp_out[l]` and `resid_pre[0]` is the embedding, so the
# last residual is the embedding plus `2L` outputs. `analysis.decompose_resid` stacks them; we add them up
# ourselves and compare.

# %%
# NBVAL_CHECK_OUTPUT
ours = cache["embed"] + sum(cache["attn_out", l] + cache["mlp_out", l] for l in range(L))
components, component_labels = analysis.decompose_resid(cache)
show_shapes(components=components, final_resid=cache["resid_post", L - 1])
print(component_labels[:5], "...", component_labels[-2:])

# %%
torch.testing.assert_close(ours, cache["resid_post", L - 1], atol=1e-4, rtol=1e-4)
torch.testing.assert_close(components.sum(0), cache["resid_post", L - 1], atol=1e-4, rtol=1e-4)

# %% [markdown]
# ## 2. Norms per layer
#
# `analysis.accumulated_resid` gives the stream as it grows: the input of each layer, then the final
# output. Its norm per layer and position, on a log colour scale:

# %%
# NBVAL_CHECK_OUTPUT
accumulated, acc_labels = analysis.accumulated_resid(cache)  # [L+1, B, P, D]
norms = accumulated[:, 0].float().norm(dim=-1)  # [L+1, P]
show_shapes(accumulated=accumulated, norms=norms)
middle = L // 2
print(f"layer {middle} input: ‖x‖ at the first position {norms[middle, 0]:.0f}, elsewhere {norms[middle, 1:].mean():.0f} on average")

# %%
viz.residual_norms(norms, labels, layer_labels=[str(l) for l in range(L)] + ["out"], title="‖residual‖ entering each layer", figsize=(5.5, 5.8))

# %% [markdown]
# How much larger is the first position? Its norm divided by the mean of the others, at each layer's input
# and at the output:

# %%
first_vs_rest = norms[:, 0] / norms[:, 1:].mean(-1)  # [L+1]
print(" ".join(f"{name}:{ratio:.1f}×" for name, ratio in zip([*map(str, range(L)), "out"], first_vs_rest.tolist())))
over_a_hundred = (first_vs_rest > 100).nonzero().flatten().tolist()
print("more than 100× at the inputs of layers", over_a_hundred)
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert (first_vs_rest[2:10] > 3).all()  # several times the others, layers 2-9
    assert (first_vs_rest[10:12] < 1.5).all()  # almost level at layers 10-11
    assert over_a_hundred == list(range(12, 22))  # more than a hundred times, layers 12-21 only
    assert first_vs_rest[-1] < 10  # under ten times at the output

# %% [markdown]
# Two things stand out. The norm grows with depth: each block adds vectors that are not cancelled. And the
# first position is an outlier whose size changes with depth (the ratios above): several times the others
# at layers 2-9, almost level with them at layers 10-11, more than a hundred times larger at layers 12-21,
# then shrinking to under ten times at the output. Position 0 can only attend to itself, so its residual is the same
# vector for every prompt: a fixed, recognisable anchor. Layer 12 is also where the attention-sink mass of
# notebook 04 jumps: idle heads park their attention on this anchor. RMSNorm divides every position by its
# own norm before each block reads it, so the giant does not swamp the other positions' computation.
#
# ## 3. Who writes what: attention against MLP
#
# The norm of each layer's attention and MLP output at the last position (where the next token is
# predicted), and how much of each goes **directly** into the answer's logit. Direct logit attribution
# projects each component on the answer's unembedding direction `w_final ⊙ W_U[answer]`, divided by the
# final norm's scale: because the final norm is the only nonlinearity between the stream and the logits,
# and its scale is one number per position, the contributions add up exactly to the logit.

# %%
# NBVAL_CHECK_OUTPUT
final_scale = cache["ln_final.hook_scale"][0, -1]  # the RMS the model divided by, [1]
direction = model.ln_final.weight * model.unembed.weight[answer]  # [D]
dla_ours = components[:, 0, -1].float() @ direction.float() / final_scale
dla, _ = analysis.direct_logit_attribution(model, cache, answer)
torch.testing.assert_close(dla_ours, dla[:, 0])
print(f"sum of direct contributions {dla.sum():.3f} = the answer's logit {logits[0, -1, answer]:.3f}")
torch.testing.assert_close(dla.sum(), logits[0, -1, answer].float(), atol=1e-3, rtol=1e-4)


# %%
def writes_figure(components: torch.Tensor, dla: torch.Tensor) -> Figure:
    """Left: ‖attn_out‖ and ‖mlp_out‖ per layer at the last position. Right: their direct logit attribution."""
    attn_rows, mlp_rows = components[1::2, 0, -1], components[2::2, 0, -1]
    fig = Figure(figsize=(8, 3.2))
    left, right = fig.subplots(1, 2)
    layers = torch.arange(L)
    left.plot(layers, attn_rows.float().norm(dim=-1).cpu(), marker=".", label="attention")
    left.plot(layers, mlp_rows.float().norm(dim=-1).cpu(), marker=".", label="MLP")
    left.set(xlabel="layer", ylabel="‖output‖ (last position)", title="how much each layer writes", yscale="log")
    left.legend(fontsize=8)
    width = 0.4
    right.bar(layers - width / 2, dla[1::2, 0].cpu(), width, label="attention")
    right.bar(layers + width / 2, dla[2::2, 0].cpu(), width, label="MLP")
    right.axhline(0, color="grey", linewidth=0.5)
    right.set(xlabel="layer", ylabel="direct logit", title=f"direct contribution to {tok.decode([answer])!r}")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


writes_figure(components, dla)

# %%
# NBVAL_CHECK_OUTPUT
top_components = dla[:, 0].abs().topk(4).indices.tolist()
print("largest direct contributions:", [component_labels[i] for i in top_components])

# %% [markdown]
# ## 4. The logit lens
#
# Read the residual after layer `l` as if it were the last one: final RMSNorm, then the unembedding. The
# RMS must be computed from **that** residual: the final norm's job is to bring the vector to unit scale
# whatever its norm was. The last layer's lens is the model's output, exactly.

# %%
# NBVAL_CHECK_OUTPUT
resid = cache.stack("resid_post")  # [L, B, P, D]
x32 = resid.float()
normalized = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)).to(resid.dtype)
lens_ours = (model.ln_final.weight * normalized) @ model.unembed.weight.T  # [L, B, P, V]
lens = analysis.logit_lens(model, cache)
show_shapes(resid=resid, lens=lens)
torch.testing.assert_close(lens_ours, lens)
torch.testing.assert_close(lens[-1], logits, atol=1e-4, rtol=1e-4)  # same math, another matmul shape

# %% [markdown]
# The heatmap: layers upward, input positions across; each cell is the top token that layer would predict
# for the *next* position, coloured by its probability.

# %%
lens_probs = lens[:, 0].float().softmax(-1)  # [L, P, V]
top_probs, top_ids = lens_probs.max(-1)  # [L, P]
top_strings = [tok.token_strings(row) for row in top_ids.tolist()]
viz.logit_lens_heatmap(top_probs, top_strings, labels, title="logit lens: top token per layer", figsize=(6.5, 7))

# %% [markdown]
# ### Common mistake: reusing the final layer's scale
#
# A tempting shortcut (and a real bug in an older tool) applies the final norm with the scale cached from
# the *last* layer's residual to every layer. Dividing by a positive number does not change which token is
# on top, but it changes the probabilities: an early residual much smaller than the last one gets divided
# by too large a number, its logits shrink, and its distribution looks flatter (more uncertain) than it is.

# %%
# NBVAL_CHECK_OUTPUT
final_rms = cache["ln_final.hook_scale"][0]  # [P, 1], computed from the last layer's residual only
wrong_lens = (model.ln_final.weight * (resid[:, 0].float() / final_rms).to(resid.dtype)) @ model.unembed.weight.T
right_lens = lens[:, 0]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


assert torch.equal(wrong_lens.argmax(-1), right_lens.argmax(-1))  # same top tokens...
for layer in (2, 10, 20, L - 1):
    print(f"layer {layer:>2}: entropy at the last position {entropy(right_lens[layer, -1]):.1f} nats (right), "
          f"{entropy(wrong_lens[layer, -1]):.1f} (final scale reused)")

# %% [markdown]
# ## 5. When does the answer appear?
#
# The rank of ` Paris` among all tokens at the last position, layer by layer, and its probability.

# %%
# NBVAL_CHECK_OUTPUT
last = lens[:, 0, -1].float()  # [L, V]
rank = (last > last[:, answer : answer + 1]).sum(-1)  # tokens scoring above the answer
prob = last.softmax(-1)[:, answer]
first_top1 = int((rank == 0).nonzero()[0]) if (rank == 0).any() else None
print("first layer where the answer is the top token:", first_top1)
print("rank in the last 6 layers:", rank[-6:].tolist())


# %%
def rank_figure(rank: torch.Tensor, prob: torch.Tensor) -> Figure:
    fig = Figure(figsize=(7, 2.8))
    left, right = fig.subplots(1, 2)
    left.plot(rank.cpu() + 1, marker=".")
    left.set(xlabel="layer", ylabel="rank + 1 (log)", yscale="log", title=f"rank of {tok.decode([answer])!r}")
    left.invert_yaxis()
    right.plot(prob.cpu(), marker=".", color="#dd8452")
    right.set(xlabel="layer", ylabel="probability", title=f"p({tok.decode([answer])!r})", ylim=(0, 1))
    fig.tight_layout()
    return fig


rank_figure(rank, prob)

# %% [markdown]
# For twenty layers the answer sits around rank 1,000-5,000 among 49,152 tokens, then falls to the top
# within five layers (23-27); its probability only becomes large in the last three. That matches the
# direct logit attribution above: the components writing ` Paris` directly are layer 23's attention and
# the MLPs of layers 25-29.
#
# ## 6. Explore
#
# `LogitLensView` draws the lens in the browser: layers × a window of positions (slide the first position
# for long prompts), each cell coloured by the probability that layer gives to the final prediction at that
# position (or to a token you type, e.g. ` Paris`); hover a cell for its top 5 tokens, click it to select
# it. It reads the same cache (only `resid_post` is needed).

# %%
# NBVAL_IGNORE_OUTPUT
explorer = LogitLensView(cache, labels)
explorer

# %%
shown_layer = explorer.layer
probe = LogitLensView(cache, labels)  # a second view: the one shown above keeps its layer
probe.layer = first_top1 if first_top1 is not None else L - 1
start, _ = probe.window()
offset = probe.position - start
assert probe.top.strings[probe.layer][offset][0] == tok.token_strings([answer])[0]
torch.testing.assert_close(probe.top.probs[:, offset, 0], top_probs[:, -1])
assert explorer.layer == shown_layer  # the view displayed above is unchanged

# %% [markdown]
# ### Per token: the loss, and the layer where each prediction settles
#
# Two numbers per position, read off the same forward: the loss of the token that actually comes next
# (`−log p`, from the output; the last position has no next token, so it has no value), and the layer from
# which the lens keeps the output's top token on top through the last layer. `TokenValuesView` colours
# the text by one of them and shows both on hover.

# %%
# NBVAL_CHECK_OUTPUT
log_probs = logits[0].float().log_softmax(-1)  # [P, V]
next_ids = tokens[0, 1:]
loss = torch.full((len(labels),), float("nan"))
loss[:-1] = -log_probs[:-1].gather(-1, next_ids[:, None])[:, 0].cpu()
torch.testing.assert_close(loss[:-1], torch.nn.functional.cross_entropy(logits[0, :-1].float(), next_ids, reduction="none").cpu())
agrees = (lens[:, 0].argmax(-1) == logits[0].argmax(-1)).cpu()  # [L, P]: this layer's top token is the output's
stays = agrees.flip(0).cumprod(0).flip(0)  # [L, P]: 1 where it agrees at this layer and at every later one
settles = (L - stays.sum(0)).float()  # [P]: the first layer of that final run (the last layer always agrees)
print("loss per token (nats):", fmt(loss, 2))
print("layer from which the lens keeps the output's top token:", settles.int().tolist())

# %%
# NBVAL_IGNORE_OUTPUT
per_token = TokenValuesView(labels, {"loss (nats)": loss, "settles at layer": settles})
per_token

# %%
check = TokenValuesView(labels, {"loss (nats)": loss, "settles at layer": settles})
check.channel = "settles at layer"  # a second view: the one shown above keeps its channel
torch.testing.assert_close(torch.from_numpy(check.arrays["settles at layer"]), settles)
assert per_token.channel == "loss (nats)"
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert settles[-1] == first_top1  # the answer's position settles where ' Paris' first tops the lens
    assert (settles >= L - 6).all()  # every position settles in the last six layers
    assert labels[2:4] == [" capital", " of"] and int(loss[:-1].argmin()) == 2 and loss[2] < 1
    assert int(loss[:-1].argmax()) == 1  # ' capital' after 'The' is the least expected token

# %% [markdown]
# In SmolLM2 every position's prediction settles only in the last six layers, and the last position
# settles exactly where ` Paris` first tops the lens (section 5). The loss is lowest for ` of` after
# ` capital` (under one nat: the phrase almost forces it) and highest for ` capital` after `The`, which
# nothing in the text predicts.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `lens(resid)`: the logit-lens logits `[..., V]` of any residual `[..., D]` (its
# own RMS, the final norm's weight, the unembedding). The check compares with `analysis.unembed`.

# %%
# NBVAL_CHECK_OUTPUT
def lens_logits(resid: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_lens = lambda resid: analysis.unembed(model, resid)
check_exercise(lens_logits, package_lens, cache["resid_post", 12])

# %% solution
# Solution to exercise 1: lens_logits
# NBVAL_CHECK_OUTPUT
def lens_logits_solution(resid: torch.Tensor) -> torch.Tensor:
    x32 = resid.float()
    normalized = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)).to(resid.dtype)
    return (model.ln_final.weight * normalized) @ model.unembed.weight.T


check_exercise(lens_logits_solution, package_lens, cache["resid_post", 12])

# %% [markdown]
# **Exercise 2.** Write `direct_logit(component)`: the direct contribution of one component's output at the
# last position (`[D]`) to the answer's logit, using the final norm's cached scale. The check compares with
# `analysis.direct_logit_attribution` for layer 20's MLP.

# %%
# NBVAL_CHECK_OUTPUT
def direct_logit(component: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


row = component_labels.index("20_mlp_out")
package_dla = lambda component: dla[row, 0]
check_exercise(direct_logit, package_dla, cache["mlp_out", 20][0, -1])

# %% solution
# Solution to exercise 2: direct_logit
# NBVAL_CHECK_OUTPUT
def direct_logit_solution(component: torch.Tensor) -> torch.Tensor:
    direction = model.ln_final.weight * model.unembed.weight[answer]
    return (component.float() @ direction.float()) / cache["ln_final.hook_scale"][0, -1, 0]


check_exercise(direct_logit_solution, package_dla, cache["mlp_out", 20][0, -1])

# %% [markdown]
# ## What to remember
# - The residual stream is a sum: embedding + every `attn_out` + every `mlp_out`. Decompose it freely.
# - Norms grow with depth; the first position becomes a giant (the attention sink's anchor).
# - Direct logit attribution: `component · (w ⊙ W_U[token]) / final RMS`; the pieces sum to the logit.
# - Logit lens: final norm **with each layer's own RMS**, then the unembedding. Reusing the final scale
#   keeps the top tokens but falsifies every probability.
# - Answers form late: watch the rank fall layer by layer.
