# %% [markdown]
# # 05 · The SwiGLU MLP
#
# Attention moves information between positions; the MLP is where each position, on its own, transforms
# what it has. It holds most of each block's parameters (three quarters in SmolLM2, four fifths in Llama 3
# 8B). Llama uses a *gated* MLP, SwiGLU:
# `down(silu(gate(x)) · up(x))`.
#
# **You will learn:**
# - the three matrices and their shapes: `gate_proj`, `up_proj`, `down_proj` (Meta calls them `w1`, `w3`,
#   `w2`: the numbering is not the order of use);
# - why the hidden size is about `8/3·D` (and how Llama 3 8B gets 14,336);
# - SiLU against ReLU and GELU, and what the gate's values look like in a trained model;
# - to re-derive an MLP from its weights and check it against the package;
# - the common mistake of swapping `w1` and `w3`, measured;
# - which neurons fire on which tokens: top activating tokens, checked on a second text.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (D = 576, M = 1536, 30 layers). With
# `LLAMA3_LAB_WEIGHTS` pointing at a Llama 3 checkpoint and a CUDA GPU, the same cells run Llama 3 on CUDA in
# bf16 (D = 4096, M = 14336); the neurons found then are different ones, and checked outputs are SmolLM2's.

# %%
import torch
import torch.nn.functional as F
from einops import einsum
from matplotlib.figure import Figure

from llama3_lab import viz
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
D, M = cfg.hidden_size, cfg.intermediate_size

# %% [markdown]
# ## 1. Three matrices
#
# `gate_proj` and `up_proj` both map the normalized residual `x` (`D`) up to `M` hidden units; their
# outputs are multiplied element-wise after the gate goes through SiLU; `down_proj` maps the `M`-vector
# back to `D`, to be added to the residual stream. Each of the `M` hidden units is a "neuron": it reads a
# direction of `x` (a row of `gate_proj` and one of `up_proj`) and writes a direction (a column of
# `down_proj`).

# %%
# NBVAL_CHECK_OUTPUT
LAYER = 5
mlp = model.blocks[LAYER].mlp
show_shapes(
    gate_proj_w1=mlp.gate_proj.weight, up_proj_w3=mlp.up_proj.weight, down_proj_w2=mlp.down_proj.weight
)
mlp_params = 3 * D * M
block_params = sum(p.numel() for p in model.blocks[LAYER].parameters())
print(f"MLP parameters per layer: {mlp_params:,} of {block_params:,} in the block ({mlp_params / block_params:.0%})")
if not nb.is_llama3:
    assert round(mlp_params / block_params, 2) == 0.75  # "three quarters in SmolLM2" (the opening cell)

# %% [markdown]
# **Why `M ≈ 8/3·D`.** The classic transformer MLP has two matrices and `M = 4D`: `8D²` parameters. A
# gated MLP has three matrices, so keeping the same parameter count means `3·D·M = 8D²`, `M = 8D/3`.
# SmolLM2 uses exactly that. Meta's code computes `int(2·4D/3)`, multiplies by `ffn_dim_multiplier` (1.3
# for Llama 3 8B) and rounds up to a multiple of `multiple_of` (1024):

# %%
# NBVAL_CHECK_OUTPUT
def meta_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FeedForward hidden size (llama/model.py)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


print("SmolLM2: 8/3 ·", D, "=", 8 * D / 3, "-> intermediate_size", M)
print("Llama 3 8B:", meta_hidden_dim(4096, multiple_of=1024, ffn_dim_multiplier=1.3))

# %% [markdown]
# ## 2. The MLP from its weights
#
# The MLP reads `ln2`'s output (the normalized residual after attention). We recompute every hooked
# intermediate: `hook_pre` (the gate, before SiLU), `hook_pre_linear` (up), `hook_post` (their product, the
# neuron activations) and `hook_mlp_out`. Since the three names in the code (`gate`, `up`, `down`) and
# Meta's (`w1`, `w3`, `w2`) are easy to mix up, the einsum patterns name the axes.

# %%
text = "In 1969, 3 astronauts flew to the Moon. Paris, London and Rome are cities in Europe."
tokens = model.to_tokens(text)
labels = tok.token_strings(tokens[0].tolist())
wanted = ("ln2.hook_out", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out")
_, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(wanted))
print(len(labels), "tokens:", labels)

# %%
# NBVAL_CHECK_OUTPUT
x = cache[f"blocks.{LAYER}.ln2.hook_out"]
gate = einsum(x, mlp.gate_proj.weight, "b p D, M D -> b p M")
up = einsum(x, mlp.up_proj.weight, "b p D, M D -> b p M")
post = F.silu(gate) * up
out = einsum(post, mlp.down_proj.weight, "b p M, D M -> b p D")
show_shapes(x=x, gate=gate, up=up, post=post, out=out)

# %%
torch.testing.assert_close(gate, cache["pre", LAYER])
torch.testing.assert_close(up, cache["pre_linear", LAYER])
torch.testing.assert_close(post, cache["post", LAYER])
torch.testing.assert_close(out, cache["mlp_out", LAYER])

# %% [markdown]
# ### The first position is different
#
# The statistics in the rest of this notebook leave position 0 out (`[0, 1:]`). Which token sits there
# depends on the tokenizer: Llama 3 texts start with `<|begin_of_text|>`; SmolLM2's start with their first
# word, here `In` (its GGUF says `add_bos_token = false`, notebook 01). Either way the first position is
# not like the others: its residual is enormous (notebook 02). Compare, at every layer, the first
# position's largest neuron activation `|hook_post|` with those of the other positions:

# %%
# NBVAL_CHECK_OUTPUT
_, all_post = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("mlp.hook_post"))
peak = torch.stack([all_post["post", layer][0].float().abs().amax(dim=-1)
                    for layer in range(cfg.num_hidden_layers)])  # [L, P]: largest |activation| per position
above = peak[:, 0] > peak[:, 1:].amax(dim=-1)  # [L]: louder than every other position
below = peak[:, 0] < peak[:, 1:].amin(dim=-1)  # [L]: quieter than every other position
print(f"first token {labels[0]!r}, {cfg.num_hidden_layers} layers:")
print(f"  louder than every other position in {int(above.sum())}: {above.nonzero().flatten().tolist()}")
print(f"  quieter than every other position in {int(below.sum())}: {below.nonzero().flatten().tolist()}")
print(f"  at layer {LAYER} its peak is {peak[LAYER, 0]:.2f}, the others' median {peak[LAYER, 1:].median():.2f}")
extreme = int(above.sum() + below.sum())
if not nb.is_llama3:
    assert labels[0] == "In" and extreme > cfg.num_hidden_layers // 2 and below[20]
    assert peak[LAYER, 0] < peak[LAYER, 1:].median()

# %% [markdown]
# So in most layers the first position is an outlier, louder or quieter than every real word after it
# (the counts above), and at layer 5 it is quieter than the typical position: it would skew a histogram of
# "what neurons do on this text". It is left out below. (What the first position is for, the attention
# sink, is notebook 04's subject.)

# %% [markdown]
# ## 3. SiLU, against ReLU and GELU
#
# `silu(z) = z · σ(z)`: close to ReLU for large `|z|`, but smooth, with a small negative dip (minimum
# −0.278 at z ≈ −1.28). GELU (`z · Φ(z)`, GPT-2's choice) is almost the same curve. In SwiGLU the
# activation only decides *how much* of `up(x)` passes: the neuron's value is `silu(gate) · up`, which can
# be negative with either sign of the gate, so a gated neuron is not "off below zero" the way a ReLU
# neuron is.

# %%
z = torch.linspace(-5, 5, 1001)
silu_ours = z * torch.sigmoid(z)
torch.testing.assert_close(silu_ours, F.silu(z))
print(f"silu minimum {silu_ours.min():.3f} at z = {z[silu_ours.argmin()]:.2f}")


# %%
def activation_figure(gate_values: torch.Tensor) -> Figure:
    """Left: SiLU, ReLU, GELU. Right: the distribution of a real layer's gate values under SiLU."""
    fig = Figure(figsize=(8, 3.2))
    left, right = fig.subplots(1, 2)
    for name, values in (("SiLU", F.silu(z)), ("ReLU", F.relu(z)), ("GELU", F.gelu(z))):
        left.plot(z, values, label=name, linewidth=1.5)
    left.axhline(0, color="grey", linewidth=0.5)
    left.set(xlabel="z", ylabel="activation(z)", title="activation functions")
    left.legend(fontsize=8)
    right.hist(gate_values.flatten().float().cpu(), bins=120, color="#4c72b0")
    right.axvline(0, color="black", linewidth=0.7)
    right.set(xlabel="gate value (hook_pre)", ylabel="count", title=f"layer {LAYER}: gate values")
    fig.tight_layout()
    return fig


activation_figure(cache["pre", LAYER][0, 1:])  # the first position left out

# %%
# NBVAL_CHECK_OUTPUT
gate_values, post_values = cache["pre", LAYER][0, 1:], cache["post", LAYER][0, 1:]  # skip the first position
negative, quiet = (gate_values < 0).float().mean().item(), (post_values.abs() < 0.1).float().mean().item()
print(f"layer {LAYER}: {negative:.0%} of gate values are negative,")
print(f"{quiet:.0%} of neuron activations have |value| < 0.1, the largest |value| is {post_values.abs().max():.2f}")
assert negative > 0.5 and quiet > 0.5 and post_values.abs().max() > 1

# %% [markdown]
# In a trained model most gate values are negative (the share above): SiLU squashes them to small numbers,
# so for a given token most neurons contribute little and a few contribute a lot. The MLP is sparse-ish
# without being exactly sparse.

# %% [markdown]
# ### Common mistake: swapping w1 and w3
#
# Meta's checkpoints call the gate `w1` and the up projection `w3`; `w2` is `down`. A converter that maps
# `w1 → up` and `w3 → gate` computes `silu(up) · gate` instead: same shapes, no error, garbage out. We run
# the model with that mistake in every layer, through hooks (the weights stay untouched), and compare the
# next-token prediction.

# %%
# NBVAL_CHECK_OUTPUT
def swapped_gate_and_up_hooks() -> list:
    """Hooks that replace silu(gate) · up by silu(up) · gate in every layer."""
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def hook(tensor: torch.Tensor, hook) -> None:
            seen[key] = tensor

        return hook

    def swapped(post: torch.Tensor, hook) -> torch.Tensor:
        return F.silu(seen["up"]) * seen["gate"]

    hooks = []
    for layer in range(cfg.num_hidden_layers):
        hooks += [
            (f"blocks.{layer}.mlp.hook_pre", keep("gate")),
            (f"blocks.{layer}.mlp.hook_pre_linear", keep("up")),
            (f"blocks.{layer}.mlp.hook_post", swapped),
        ]
    return hooks


prompt = model.to_tokens("The capital of France is")
with torch.no_grad():
    right = model(prompt)[0, -1].float().softmax(-1)
    wrong = model.run_with_hooks(prompt, swapped_gate_and_up_hooks())[0, -1].float().softmax(-1)
answer = int(right.argmax())
print(f"right:   top token {tok.token_strings([answer])[0]!r} with p = {right[answer]:.2f}")
print(f"swapped: top token {tok.token_strings([int(wrong.argmax())])[0]!r}; p({tok.token_strings([answer])[0]!r}) < 1e-6:", bool(wrong[answer] < 1e-6))
assert int(wrong.argmax()) != answer and wrong[answer] < 1e-6  # no error, and the answer is gone

# %%
print("top 5 right:  ", tok.token_strings(right.topk(5).indices.tolist()))
print("top 5 swapped:", tok.token_strings(wrong.topk(5).indices.tolist()))

# %% [markdown]
# ## 4. Which neurons fire on which tokens
#
# A neuron's activation `hook_post[p, n]` on each token of a text is the simplest window into what it
# responds to. To avoid fooling ourselves, we **select** a neuron on one text (the one whose mean
# activation on digit tokens most exceeds its mean on the other tokens) and then **test** it on a second
# text it has never seen. The first position is left out of both texts, as in section 2.

# %%
# NBVAL_CHECK_OUTPUT
def selective_neuron(post: torch.Tensor, selected: torch.Tensor) -> int:
    """The neuron whose mean activation on the selected positions most exceeds its mean elsewhere."""
    difference = post[selected].mean(0) - post[~selected].mean(0)
    return int(difference.argmax())


NEURON_LAYER = 20
acts = cache["post", NEURON_LAYER][0, 1:].float()  # [P-1, M]
is_digit = torch.tensor([label.strip().isdigit() for label in labels[1:]])
neuron = selective_neuron(acts, is_digit)
top = acts[:, neuron].topk(5)
print(f"layer {NEURON_LAYER} neuron {neuron}; its top tokens here:", [labels[1 + i] for i in top.indices.tolist()])

# %%
viz.topk_bars(
    [labels[1 + i] for i in top.indices.tolist()],
    top.values,
    xlabel="activation (hook_post)",
    title=f"L{NEURON_LAYER} N{neuron}: top tokens (selection text)",
    figsize=(4.5, 2.2),
)

# %% [markdown]
# The whole selection text, each token coloured by the neuron's activation (blue negative, red positive):

# %%
viz.token_strip(labels[1:], acts[:, neuron], center=0, label="activation", title=f"L{NEURON_LAYER} N{neuron} on the selection text")

# %% [markdown]
# Now a text the selection never saw. If the neuron tracks digits, the digits should light up again.

# %%
# NBVAL_CHECK_OUTPUT
test_text = "My sister moved from Berlin to Madrid in 2015, and she visits Tokyo every 4 years."
test_tokens = model.to_tokens(test_text)
test_labels = tok.token_strings(test_tokens[0].tolist())[1:]
_, test_cache = model.run_with_cache(test_tokens, names_filter=f"blocks.{NEURON_LAYER}.mlp.hook_post")
test_acts = test_cache["post", NEURON_LAYER][0, 1:, neuron].float()
test_top = test_acts.topk(4).indices.tolist()
print("top tokens on the test text:", [test_labels[i] for i in test_top])
is_test_digit = torch.tensor([label.strip().isdigit() for label in test_labels])
print(f"mean activation on digits {test_acts[is_test_digit].mean():.2f}, elsewhere {test_acts[~is_test_digit].mean():.2f}")
if not nb.is_llama3:
    assert all(test_labels[i].isdigit() for i in test_top[:2]) and " in" in [test_labels[i] for i in test_top]
    assert test_acts[is_test_digit].mean() > 2 * test_acts[~is_test_digit].mean()

# %%
viz.token_strip(test_labels, test_acts, center=0, label="activation", title=f"L{NEURON_LAYER} N{neuron} on a new text")

# %% [markdown]
# It generalises, imperfectly. In SmolLM2 the two strongest tokens on the new text are digits, and digit
# tokens activate it more than twice as much as the others on average (the means above); but a non-digit
# is among its top four: ` in`, the word before 2015. That is typical: single neurons are rarely
# clean features (they are *polysemantic*), which is why interpretability research moved on to
# directions found by sparse dictionaries. The single neuron is still the right first look.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `swiglu(x, w_gate, w_up, w_down)` for one MLP, with weights in PyTorch's `[out, in]`
# layout. The check compares with the package's MLP module of layer 5.

# %%
# NBVAL_CHECK_OUTPUT
def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_mlp = lambda x, w_gate, w_up, w_down: mlp(x)
weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
check_exercise(swiglu, package_mlp, x, *weights)

# %% solution
# Solution to exercise 1: swiglu
# NBVAL_CHECK_OUTPUT
def swiglu_solution(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
) -> torch.Tensor:
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


check_exercise(swiglu_solution, package_mlp, x, *weights)

# %% [markdown]
# **Exercise 2.** Meta's checkpoints store the same MLP as `w1`, `w2`, `w3`. Write
# `feed_forward_meta(x, w1, w2, w3)` in Meta's names (same `[out, in]` layout); the check passes Meta's
# names of layer 5's weights.

# %%
# NBVAL_CHECK_OUTPUT
def feed_forward_meta(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


meta_weights = {"w1": mlp.gate_proj.weight, "w2": mlp.down_proj.weight, "w3": mlp.up_proj.weight}
package_mlp_meta = lambda x, w1, w2, w3: mlp(x)
check_exercise(feed_forward_meta, package_mlp_meta, x, *meta_weights.values())

# %% solution
# Solution to exercise 2: feed_forward_meta
# NBVAL_CHECK_OUTPUT
def feed_forward_meta_solution(
    x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor
) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)  # w1 = gate, w3 = up, w2 = down


check_exercise(feed_forward_meta_solution, package_mlp_meta, x, *meta_weights.values())

# %% [markdown]
# ## What to remember
# - SwiGLU: `down(silu(gate(x)) · up(x))`; Meta: `w2(silu(w1(x)) · w3(x))`. Swapping `w1` and `w3`
#   raises no error and destroys the model.
# - `M ≈ 8/3·D` keeps the parameter count of a `4D` two-matrix MLP; Llama 3 8B: 14,336 by Meta's rounding.
# - SiLU is a smooth ReLU with a small negative dip; in the gate it decides how much of `up(x)` passes.
# - `hook_post` holds the neuron activations; select neurons on one text, test them on another.
