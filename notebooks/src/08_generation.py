# %% [markdown]
# # 08 · Generation, one step at a time
#
# A forward pass gives a distribution over the next token. Generation is the loop around it: choose a token,
# append it, run again. Everything that makes outputs boring, creative or broken is in *how the token is
# chosen*. This notebook builds the choices from scratch on a real distribution and checks them against the
# package, then steps through a generation and looks at each step's record.
#
# **You will learn:**
# - greedy decoding, temperature, top-k and nucleus (top-p) sampling, derived from scratch and checked
#   against `llama3_lab.generation` (the kept sets must be identical, token for token);
# - how a seeded draw works, so a "random" generation can be reproduced exactly;
# - `Session`: one step per call, each returning a `StepRecord` (top-k, entropy, attention, residual norms);
#   a KV-cached step equals a full recomputation; rewind and fork;
# - to read a generation's uncertainty from the entropy of each step;
# - the `StepperView` in the browser: step, sample, force a token, click a token to rewind there.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32. With `LLAMA3_LAB_WEIGHTS` pointing at a
# Llama 3 checkpoint and a CUDA GPU, the same cells run Llama 3 on CUDA in bf16 (its stop tokens
# `<|end_of_text|>` and `<|eot_id|>`); checked outputs are SmolLM2's.

# %%
import torch
from matplotlib.figure import Figure

from llama3_lab import viz
from llama3_lab.generation import sample_next, sampling_probs, top_k_mask, top_p_mask
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import StepperView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer

# %% [markdown]
# ## 1. One distribution
#
# An open-ended prompt, so the next token is genuinely uncertain. The model gives one logit per vocabulary
# entry at the last position.

# %%
# NBVAL_CHECK_OUTPUT
prompt = "My favourite animal is the"
tokens = model.to_tokens(prompt)
with torch.no_grad():
    logits = model(tokens)[0, -1].float()  # [V]
probs = logits.softmax(-1)
show_shapes(tokens=tokens, logits=logits)


def entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-30).log()).sum())


top10 = probs.topk(10)
print("top 10:", tok.token_strings(top10.indices.tolist()))
print(f"entropy {entropy(probs):.2f} nats; the top 10 hold {top10.values.sum():.0%} of the mass")

# %% [markdown]
# ## 2. Greedy and temperature
#
# **Greedy** takes the argmax: deterministic, and prone to loops on long outputs. **Temperature** `T`
# divides the logits before the softmax: `T < 1` sharpens the distribution towards greedy, `T > 1` flattens
# it. `T = 0` is defined as greedy (a one-hot distribution).

# %%
# NBVAL_CHECK_OUTPUT
greedy = int(logits.argmax())
torch.testing.assert_close(sampling_probs(logits, temperature=0), torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float())
print("greedy:", repr(tok.decode([greedy])))
for T in (0.3, 0.6, 1.0, 1.5):
    ours = (logits / T).softmax(-1)
    torch.testing.assert_close(ours, sampling_probs(logits, temperature=T, top_p=1.0))
    print(f"T={T}: p(greedy token) {ours[greedy]:.2f}, entropy {entropy(ours):.2f} nats")


# %%
def two_bars(left: tuple, right: tuple, k: int = 10) -> Figure:
    """Top-k bars of two distributions side by side; each tuple is (probs, title, highlighted ids)."""
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    for ax, (p, title, marked) in zip(axes, (left, right)):
        top = p.topk(k)
        ids = top.indices.tolist()
        viz.topk_bars(tok.token_strings(ids), top.values, ax=ax, title=title, highlight=[i for i, t in enumerate(ids) if t in marked])
    fig.tight_layout()
    return fig


two_bars((logits.div(0.6).softmax(-1), "T = 0.6", {greedy}), (logits.div(1.5).softmax(-1), "T = 1.5", {greedy}))

# %% [markdown]
# ## 3. Top-k and top-p (nucleus)
#
# Even at `T = 1` most of the 49,152 tokens have tiny probabilities, but together they hold real mass,
# and one bad draw from that tail derails a text. Two truncations fix it:
# - **top-k** keeps the `k` most probable tokens;
# - **top-p** keeps the smallest set of most probable tokens whose mass exceeds `p`. Meta's rule: sort
#   descending, drop every token whose *preceding* cumulative mass already exceeds `p`. The size of the
#   kept set adapts: a few tokens when the model is sure, many when it is not.
#
# Then renormalise and draw. We build both masks and compare them, element by element, with the package's.

# %%
# NBVAL_CHECK_OUTPUT
def our_top_k_mask(p: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[p.topk(k).indices] = True
    return keep


def our_top_p_mask(p: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, order = p.sort(descending=True)
    preceding = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[preceding <= top_p]] = True
    return keep


for T in (0.6, 1.0):
    p = (logits / T).softmax(-1)
    assert torch.equal(our_top_k_mask(p, 50), top_k_mask(p, 50))
    nucleus = our_top_p_mask(p, 0.9)
    assert torch.equal(nucleus, top_p_mask(p, 0.9))
    print(f"T={T}: the top-p=0.9 nucleus has {int(nucleus.sum())} tokens holding {p[nucleus].sum():.3f} of the mass")

# %% [markdown]
# At `T = 1` the nucleus of this prompt holds over a thousand tokens: with an open question the model's
# uncertainty is real, and top-k = 50 would cut much of it. At `T = 0.6` it shrinks tenfold.
#
# The whole pipeline, temperature then top-k then top-p then renormalise, against `sampling_probs`:

# %%
T, k, top_p = 0.8, 50, 0.9
p = (logits / T).softmax(-1)
p = p * our_top_k_mask(p, k)
p = p / p.sum()
p = p * our_top_p_mask(p, top_p)
ours = p / p.sum()
torch.testing.assert_close(ours, sampling_probs(logits, temperature=T, top_p=top_p, top_k=k))

# %%
p1 = logits.softmax(-1)
sharp = (logits / 0.3).softmax(-1)
kept = set(our_top_p_mask(sharp, 0.8).nonzero()[:, 0].tolist())
two_bars((sharp, f"T = 0.3: nucleus p = 0.8 ({len(kept)} tokens) in orange", kept), (ours, f"after T={T}, top-k={k}, top-p={top_p}", set()), k=12)

# %% [markdown]
# ## 4. A seeded draw
#
# The draw is `torch.multinomial` on the final distribution with a `torch.Generator`. Same seed, same
# distribution: same token, on any run. `sample_next` is exactly that.

# %%
# NBVAL_CHECK_OUTPUT
ours_drawn = [int(torch.multinomial(ours, 1, generator=torch.Generator().manual_seed(s))) for s in range(8)]
package_drawn = [
    int(sample_next(logits, T, top_p, k, generator=torch.Generator().manual_seed(s))) for s in range(8)
]
assert ours_drawn == package_drawn
print("8 seeded draws:", tok.token_strings(ours_drawn))

# %% [markdown]
# ## 5. A session, step by step
#
# `model.session(prompt, ...)` prefills the prompt into a KV cache (notebook 09) and then advances one token
# per `step()`. Each step returns a `StepRecord`: the token, its probability, the entropy of the
# distribution it was drawn from (before truncation), the top-10, each head's attention row and the residual
# after each layer for the query that produced it.

# %%
# NBVAL_CHECK_OUTPUT
session = model.session("Once upon a time", temperature=0)
records = session.step(12)
print(repr(session.text))
show_shapes(attention=records[0].attention, resid=records[0].resid, logits=records[0].logits)

# %%
records[0]

# %% [markdown]
# A KV-cached step computes only the new position, yet it must equal running the whole sequence again.
# Compare the last record's logits with a full forward:

# %%
with torch.no_grad():
    full = model(torch.tensor([session.tokens[:-1]], device=model.device))[0, -1]
torch.testing.assert_close(records[-1].logits, full, atol=1e-4, rtol=1e-4)

# %% [markdown]
# **Entropy per step.** Low entropy: the model is sure (a word's second half, a fixed phrase). High
# entropy: a real choice, where sampling settings matter. Each new token coloured by the entropy of the
# distribution it came from:

# %%
# NBVAL_CHECK_OUTPUT
entropies = torch.tensor([r.entropy for r in session.history])
step_tokens = [r.token_text for r in session.history]
most_uncertain = int(entropies.argmax())
print(f"most uncertain step: {most_uncertain} ({step_tokens[most_uncertain]!r}); most certain: {int(entropies.argmin())} ({step_tokens[int(entropies.argmin())]!r})")

# %%
viz.token_strip(step_tokens, entropies, label="entropy (nats)", title="greedy continuation of 'Once upon a time'", chars_per_row=60)

# %%
record = session.history[most_uncertain]
viz.topk_bars(record.top_k.texts, record.top_k.probs, highlight=record.token_text, title=f"step {most_uncertain}: the candidates")

# %% [markdown]
# ### Rewind and fork
#
# `rewind(n)` forgets the last `n` tokens (the KV cache is truncated, the random state restored), so
# stepping again reproduces them. `fork()` copies the session (its cache too): try a different setting
# from the same point without recomputing the prompt.

# %%
# NBVAL_CHECK_OUTPUT
before = list(session.tokens)
session.rewind(4)
print("after rewind(4):", repr(session.text))
session.step(4)
assert session.tokens == before  # greedy: the same four tokens again

sampled = model.session("Once upon a time", temperature=0.9, top_p=0.95, seed=1)
sampled.step(10)
twin = sampled.fork()
first = list(sampled.tokens)
sampled.rewind(5)
sampled.step(5)
assert sampled.tokens == first  # the random state was restored with the rewind
twin.temperature = 0.0  # the fork goes on greedily; the original is unaffected
twin.step(5)
print("sampled:", repr(sampled.text))
print("fork, then greedy:", repr(twin.text))
assert twin.tokens[: len(first)] == first and len(twin.tokens) == len(first) + 5

# %% [markdown]
# ## 6. The stepper
#
# `StepperView` wraps a session and draws it in the browser: **Step** (the session's sampling, greedy
# here), **Sample** (one draw at the temperature beside it), **Force** a token you type, **Back** and
# **Reset**, and a layer/head choice for the attention. Hover a generated token for its top-k candidates
# and entropy, with the context coloured by what that token's query attended to; click it to rewind to
# just before it, with its alternatives offered as buttons to force.

# %%
# NBVAL_IGNORE_OUTPUT
stepper = StepperView(model, "Once upon a time", temperature=0.0, layer=20, head=0)
stepper.step(3)
stepper

# %% [markdown]
# Its state is plain attributes and its buttons are methods, so code (and CI) can press them. The check
# presses those of a second stepper, so the one shown above keeps its three steps:

# %%
# NBVAL_CHECK_OUTPUT
shown = list(stepper.tokens)
probe = StepperView(model, "Once upon a time", temperature=0.0, layer=20, head=0)
probe.step(3)
n = len(probe.tokens)
probe.step()
assert len(probe.tokens) == n + 1
assert probe.tokens[: n + 1] == session.tokens[: n + 1]  # greedy: the same text as the session above
probe.back()
assert len(probe.tokens) == n
probe.reset()
assert probe.tokens == probe.session.prompt_tokens and not probe.history
probe.step(2)
row = probe.attention_row()
print(f"after reset and 2 steps: {len(probe.history)} records; attention row of layer 20 head 0 sums to {row.sum():.3f}")
assert stepper.tokens == shown and len(stepper.history) == 3  # the stepper displayed above is unchanged

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `nucleus(p, top_p)`: the boolean mask of the top-p set (Meta's rule: drop a token
# when the mass of the tokens ranked above it already exceeds `top_p`). The check compares with the
# package's `top_p_mask` on the `T = 1` distribution.

# %%
# NBVAL_CHECK_OUTPUT
def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_exercise(nucleus, top_p_mask, p1, 0.8)

# %% solution
# Solution to exercise 1: nucleus
# NBVAL_CHECK_OUTPUT
def nucleus_solution(p: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, order = p.sort(descending=True)
    drop_sorted = sorted_p.cumsum(-1) - sorted_p > top_p
    return torch.zeros_like(drop_sorted).scatter(-1, order, ~drop_sorted)


check_exercise(nucleus_solution, top_p_mask, p1, 0.8)

# %% [markdown]
# **Exercise 2.** Write `with_top_k(logits, temperature, k)`: the distribution to draw from with temperature
# and top-k only (no nucleus), renormalised. The check compares with `sampling_probs(..., top_p=1.0)`.

# %%
# NBVAL_CHECK_OUTPUT
def with_top_k(logits: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_top_k = lambda logits, temperature, k: sampling_probs(logits, temperature, top_p=1.0, top_k=k)
check_exercise(with_top_k, package_top_k, logits, 0.7, 20)

# %% solution
# Solution to exercise 2: with_top_k
# NBVAL_CHECK_OUTPUT
def with_top_k_solution(logits: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    p = (logits / temperature).softmax(-1)
    kept = torch.zeros_like(p).scatter(-1, p.topk(k).indices, 1.0)
    return p * kept / (p * kept).sum()


check_exercise(with_top_k_solution, package_top_k, logits, 0.7, 20)

# %% [markdown]
# ## What to remember
# - Greedy = argmax (T = 0). Temperature divides the logits: below 1 sharper, above 1 flatter.
# - top-k keeps a fixed number of tokens; top-p keeps the smallest prefix whose mass exceeds p, so its size
#   follows the model's certainty. Apply, renormalise, draw with a seeded generator.
# - A `Session` records every step (top-k, entropy, attention, residual); a cached step equals a full
#   forward; `rewind` reproduces, `fork` branches.
# - Entropy per step shows where the text was really chosen, and where sampling settings matter.
