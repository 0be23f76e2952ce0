# %% [markdown]
# # 14 · Sparse autoencoders
#
# A residual-stream vector has 576 numbers in SmolLM2, and no single one of them means "this token is a
# digit". A **sparse autoencoder** (SAE) rewrites each vector as a sum of a few directions picked from a much
# larger dictionary, and those directions (the **features**) are often readable one by one. This notebook
# builds one, checks it, and reads a few of its features.
#
# **You will learn:**
# - what an SAE computes (encode with **TopK**, decode), written out with torch and checked against
#   `llama3_lab.sae` on the same weights;
# - to **train** a small TopK SAE on SmolLM2's residual stream in about a minute on CPU, and to judge it by
#   **explained variance**, **L0**, the **dead fraction** and the **CE loss recovered** when it replaces the
#   activation;
# - to **find features** by what they fire on (precision and recall against a token category), and to read
#   one with a **dashboard**: top contexts, activation histogram, logit effect;
# - **splicing**: with the error term the model is unchanged (exactly), without it the reconstruction's
#   error shows; and to **ablate** and **steer** one feature during generation.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32, always (`LLAMA3_LAB_WEIGHTS` is not
# used here: `llama3_lab.sae.train_sae` trains on the CPU). The SAE reads `blocks.15.hook_resid_post`, the
# residual stream after block 15 of 30. It is trained in this notebook (about a minute); set
# `LLAMA3_LAB_USE_CACHED_SAE=1` to load the one `llama3-lab sae train` (a 10-minute run) writes to the cache
# instead. The stored outputs, and CI, use the one trained here.

# %%
import os
import warnings

import torch

from llama3_lab import load_model, viz
from llama3_lab.notebook import DEFAULT_MODEL, check_exercise, fmt, setup_notebook, show_shapes
from llama3_lab.sae import SAE, SAEConfig, load_sae, model_with_sae, sae_hook_name
from llama3_lab.sae.activations import activations_at, token_contexts
from llama3_lab.sae.cli import default_output
from llama3_lab.sae.corpus import CORPUS_SOURCE, python_reference_texts, split_texts
from llama3_lab.sae.dashboard import feature_dashboard, feature_interventions, top_activating_contexts
from llama3_lab.sae.metrics import ReconstructionStats, splice_loss
from llama3_lab.sae.training import train_sae
from llama3_lab.views import TokenValuesView

setup_notebook()
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")  # e.g. CJK tokens: drawn as boxes

# %%
model = load_model(DEFAULT_MODEL, device="cpu", dtype=torch.float32, progress=False)
tok = model.tokenizer
HOOK = "blocks.15.hook_resid_post"
D = model.cfg.hidden_size

# %% [markdown]
# ## 1. The activations to explain
#
# The SAE sees one vector per token: the residual stream at `HOOK`. A short prompt with digits and
# parentheses in it, so the features found later have something to fire on (BOS first, as in the contexts
# the SAE is trained on):

# %%
# NBVAL_CHECK_OUTPUT
prompt = "print(round(3.14159, 2)) # rounds pi to 3.14"
prompt_ids = model.to_tokens(prompt, prepend_bos=True)  # [1, P]
prompt_tokens = tok.token_strings(prompt_ids[0].tolist())
x = activations_at(model, [HOOK], prompt_ids)[HOOK]  # [1, P, D]: the forward stops after block 15
print(prompt_tokens)
show_shapes(prompt_ids=prompt_ids, x=x)

# %% [markdown]
# ## 2. What an SAE computes
#
# With a dictionary of `d_sae` features (`W_enc [D, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, D]`,
# `b_dec [D]`, SAELens's layout), a **TopK** SAE computes, for each token vector `x`:
#
# - pre-activations `pre = (x − b_dec) @ W_enc + b_enc` `[d_sae]`;
# - features `f`: keep the `k` largest entries of `pre` (ReLU'd), set every other entry to 0;
# - reconstruction `x̂ = f @ W_dec + b_dec`: `b_dec` plus a sum of `k` rows of `W_dec`, each scaled by
#   its feature's value.
#
# Training makes `x̂ ≈ x` with only `k` features per token, so each feature must carry something that recurs.
# The dictionary has `d_sae = 4 D` = 2,304 features. Training reads activations from the corpus the package
# uses, streamed from the model in contexts of 128 tokens, and stops after a fixed number of tokens rather
# than a time limit, so a slow machine trains the same amount.

# %%
CACHED = default_output(DEFAULT_MODEL, HOOK, 48, 4 * D)  # where `llama3-lab sae train` writes its SAE
use_cached = os.environ.get("LLAMA3_LAB_USE_CACHED_SAE") == "1" and (CACHED / "sae_weights.safetensors").is_file()
texts, held_out = split_texts(python_reference_texts())
print("corpus:", CORPUS_SOURCE)
print(f"{len(texts)} training texts, {len(held_out)} held out for the metrics")
if use_cached:
    sae = load_sae(CACHED)
    print(f"SAE: the cached one from `llama3-lab sae train` ({CACHED.name})")
else:
    result = train_sae(model, HOOK, texts, d_sae=4 * D, k=32, n_tokens=12_288, buffer_tokens=4096, reuse=4,
                       progress=False, seed=0)
    sae = result.sae
    print(f"SAE: trained here on {result.tokens_read:,} activations ({result.steps} steps of 512)")
    print("training explained variance, first and last step:",
          fmt([result.history[0]["explained_variance"], result.history[-1]["explained_variance"]], 3))
print(sae)

# %% [markdown]
# Now the three equations, written out with torch on the SAE's own weights, against `sae.encode`,
# `sae.decode` and `sae(x)`. Training scaled the inputs by a constant and folded it into the weights at the
# end, so the saved SAE reads raw activations (`normalize_activations = "none"`) and subtracts `b_dec` first
# (`apply_b_dec_to_input`), the branch written here:

# %%
# NBVAL_CHECK_OUTPUT
cfg = sae.cfg
assert cfg.architecture == "topk" and cfg.normalize_activations == "none" and cfg.apply_b_dec_to_input
k = cfg.k
with torch.no_grad():
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [1, P, d_sae]
    top = pre.topk(k, dim=-1)  # the k largest pre-activations of each token
    features = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())  # [1, P, d_sae]
    recons = features @ sae.W_dec + sae.b_dec  # [1, P, D]
    torch.testing.assert_close(features, sae.encode(x))
    torch.testing.assert_close(recons, sae.decode(features))
    torch.testing.assert_close(recons, sae(x))
assert ((features != 0).sum(-1) <= k).all()  # at most k features per token
show_shapes(x=x, pre=pre, features=features, recons=recons)

# %% [markdown]
# One token's reconstruction is `b_dec` plus its active features' rows of `W_dec`. Here is the token `3`
# (the first digit of `3.14159`), with the features that write most of it:

# %%
position = prompt_tokens.index("3")
active = features[0, position].nonzero()[:, 0]
by_hand = sae.b_dec + (features[0, position, active, None] * sae.W_dec[active]).sum(0)
torch.testing.assert_close(by_hand, recons[0, position])
strongest = features[0, position].topk(8)
print(f"token {prompt_tokens[position]!r} at position {position}: {len(active)} active features")
viz.topk_bars([f"#{i}" for i in strongest.indices.tolist()], strongest.values, xlabel="activation",
              title=f"the 8 strongest features (by index) of {prompt_tokens[position]!r}")

# %% [markdown]
# ## 3. How good is it?
#
# Four numbers, measured on held-out text (every tenth text of the corpus, never trained on):
#
# - **explained variance** `1 − Σ|x − x̂|² / Σ|x − x̄|²` (`x̄` the mean activation): how much of the
#   activations' spread the reconstruction keeps;
# - **L0**: features active per token (at most `k` for TopK);
# - **dead fraction**: features that never fire on these tokens (capacity wasted);
# - **CE loss recovered**: replace the activation by the reconstruction in the forward and measure the
#   next-token loss: `(CE_zero − CE_spliced) / (CE_zero − CE_clean)`, 1 when the swap costs nothing, 0 when
#   it is as bad as zeroing the activation.
#
# First the activations of 24 held-out contexts (BOS dropped, as in training), kept for the rest of the
# notebook:

# %%
contexts = []
for _, ids in token_contexts(model, held_out, 128):
    contexts.append(ids)
    if len(contexts) == 24:
        break
held_ids = torch.stack(contexts)  # [24, 128]
held_x = torch.cat([activations_at(model, [HOOK], held_ids[i : i + 8])[HOOK] for i in range(0, 24, 8)])
held_x = held_x[:, 1:].flatten(0, 1)  # [N, D]
held_tokens = tok.token_strings(held_ids[:, 1:].flatten().tolist())
with torch.no_grad():
    held_f = sae.encode(held_x)  # [N, d_sae]
    held_recons = sae.decode(held_f)
show_shapes(held_x=held_x, held_f=held_f)

# %% [markdown]
# Explained variance and L0 from scratch, checked against the package's streaming `ReconstructionStats`:

# %%
x64, r64 = held_x.double(), held_recons.double()
explained = 1 - (x64 - r64).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum()
l0 = (held_f != 0).sum(-1).float().mean()
dead = 1 - (held_f != 0).any(0).float().mean()
stats = ReconstructionStats()
stats.update(held_x, held_recons, held_f)
torch.testing.assert_close(explained.item(), stats.explained_variance)
torch.testing.assert_close(l0.item(), stats.l0)
torch.testing.assert_close(dead.item(), stats.dead_fraction)
loss = splice_loss(model, sae, held_ids[:4])  # 4 contexts: clean, spliced (no error term), zeroed
print(f"explained variance {explained:.3f} · L0 {l0:.1f} (k = {k}) · dead {100 * dead:.1f}% of "
      f"{cfg.d_sae} features, on {len(held_x):,} held-out tokens")
print(f"CE clean {loss.clean:.3f}, spliced {loss.spliced:.3f}, zeroed {loss.zero_ablated:.3f}: "
      f"CE loss recovered {loss.recovered:.3f}")
assert explained > 0.6 and k - 1 <= l0 <= k and dead < 0.15 and loss.recovered > 0.85
assert loss.clean < loss.spliced < loss.zero_ablated and explained < loss.recovered
if not use_cached:  # trained here: each activation was trained on several times
    reuse = result.tokens_trained / result.tokens_read
    print(f"trained here: {reuse:.1f} passes per activation; explained variance on its last training batch "
          f"{result.history[-1]['explained_variance']:.3f}, on held-out text {explained:.3f}")
    assert explained < result.history[-1]["explained_variance"]

# %% [markdown]
# Each number clears its threshold (asserted above: explained variance above 0.6, L0 within one of `k`,
# dead fraction under 15%, CE loss recovered above 0.85), and the spliced loss sits between the clean and
# the zeroed one. Here the CE loss recovered is the higher of the two fractions (asserted): they measure
# different things, the spread of the activations the reconstruction keeps and the part of the model's
# loss it keeps, so both are reported. When the SAE was trained here, its explained variance on held-out
# text is also below the figure on its last training batch (asserted in that case): with a small corpus
# read several times over, the held-out number is the one to trust. The 10-minute SAE of
# `llama3-lab sae train` writes its own figures to `metrics.json` beside it.
#
# ## 4. Finding features
#
# A feature is a direction the SAE uses; whether it *means* something is a claim to test. One test: pick a
# category of tokens and ask, for each feature, how often it fires on that category (**precision**: of the
# tokens where it fires, the fraction in the category) and how much of the category it covers (**recall**:
# of the category's tokens, the fraction where it fires). The best feature by F1 (their harmonic mean):

# %%
def category_scores(fired: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall of every feature against a category: fired [N, d_sae] bool, member [N] bool."""
    hits = (fired & member[:, None]).sum(0).float()
    return hits / fired.sum(0).clamp_min(1), hits / member.sum()


def best_feature(member: torch.Tensor) -> tuple[int, float, float]:
    precision, recall = category_scores(held_f != 0, member)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-9)
    best = int(f1.argmax())
    return best, precision[best].item(), recall[best].item()


is_digit = torch.tensor([t.strip().isdigit() for t in held_tokens])
is_paren = torch.tensor(["(" in t for t in held_tokens])
DIGIT, digit_precision, digit_recall = best_feature(is_digit)
PAREN, paren_precision, paren_recall = best_feature(is_paren)
for name, feature, member, precision, recall in (
    ("digit", DIGIT, is_digit, digit_precision, digit_recall),
    ("'('", PAREN, is_paren, paren_precision, paren_recall),
):
    print(f"{name} tokens: {int(member.sum())} of {len(member):,}; best feature {feature}: "
          f"{100 * precision:.0f}% of its firings are {name} tokens, it fires on {100 * recall:.0f}% of them")
assert min(digit_precision, digit_recall) > 0.5
assert min(paren_precision, paren_recall) > 0.35

# %% [markdown]
# Both features pass the test (asserted: precision and recall above 0.5 for the digit feature, above 0.35
# for the parenthesis feature; the exact figures are printed above). The dashboard of the digit feature,
# from `llama3_lab.sae.dashboard` on the same held-out text: its top contexts, the histogram of its
# non-zero activations with its firing rate, and its **direct logit effect** `W_dec[f] · W_Uᵀ`, the tokens
# its direction would promote or suppress if it went straight to the unembedding (block 15 is halfway up,
# so 15 more blocks stand between them). It also carries the generations used in section 5:

# %%
steer_prompt = "My favourite animal is the"
digit_board = feature_dashboard(model, sae, DIGIT, held_out, n_contexts=6, n_tokens=2_000, k=6,
                                prompt=steer_prompt, max_new_tokens=12)
top_tokens = [c.tokens[c.peak] for c in digit_board.contexts]
on_digits = sum(t.strip().isdigit() for t in top_tokens)
print("peak tokens of the top contexts:", top_tokens)
print(f"{on_digits} of the {len(top_tokens)} top contexts peak on a digit; firing rate "
      f"{100 * digit_board.histogram.firing_rate:.2f}% of {digit_board.histogram.n_tokens:,} tokens")
assert on_digits >= len(top_tokens) // 2 and top_tokens[0].strip().isdigit()

# %%
viz.feature_dashboard(digit_board, prompt=steer_prompt, title=f"feature {DIGIT}: digits")

# %% [markdown]
# The strongest context peaks on a digit, and so do at least half of the others (asserted; the printed
# peak tokens show which do not). A top-contexts list shows one context per stretch of 128 tokens, so a
# stretch without digits still contributes its largest activation. The parenthesis feature's top contexts:

# %%
paren_contexts = top_activating_contexts(model, sae, PAREN, held_out, n_contexts=5, n_tokens=2_000)
print("peak tokens:", [c.tokens[c.peak] for c in paren_contexts])
assert sum("(" in c.tokens[c.peak] for c in paren_contexts) >= 3

# %%
viz.feature_contexts(paren_contexts, title=f"feature {PAREN}: top contexts (peak token outlined)")

# %% [markdown]
# Both features on the prompt of section 1, in a browser view (hover a token for both values; switch the
# channel in the menu). The activations come from the SAE's own hook point inside the model,
# `blocks.15.hook_resid_post.sae.hook_sae_acts_post`, with the SAE spliced in:

# %%
# NBVAL_IGNORE_OUTPUT
acts_name = sae_hook_name(sae, "hook_sae_acts_post")
with torch.no_grad(), model_with_sae(model, sae, use_error_term=True):
    _, spliced_cache = model.run_with_cache(prompt_ids, names_filter=acts_name)
prompt_features = spliced_cache[acts_name][0]  # [P, d_sae]
view = TokenValuesView(prompt_tokens, {f"#{DIGIT} digits": prompt_features[:, DIGIT],
                                       f"#{PAREN} paren": prompt_features[:, PAREN]})
view

# %%
torch.testing.assert_close(prompt_features, features[0])  # the hook point holds what encode computed
assert view.channel == f"#{DIGIT} digits" and view.channels == [f"#{DIGIT} digits", f"#{PAREN} paren"]
digit_positions = [i for i, t in enumerate(prompt_tokens) if t.strip().isdigit()]
fired_on = (prompt_features[:, DIGIT] > 0).nonzero()[:, 0].tolist()
print(f"digit tokens of the prompt at {digit_positions}; feature {DIGIT} fires at {fired_on}")
assert len(set(fired_on) & set(digit_positions)) >= len(digit_positions) // 2

# %% [markdown]
# The same channel as a static figure (what the view shows without a browser):

# %%
viz.token_strip(prompt_tokens, prompt_features[:, DIGIT], label=f"feature {DIGIT}", chars_per_row=60,
                title=f"feature {DIGIT} on the prompt")

# %% [markdown]
# ## 5. Splicing: the SAE inside the model
#
# `model_with_sae` puts the SAE at its hook point: the rest of the model reads the SAE's output instead of
# the activation. With `use_error_term=True` that output is `x̂ + (x − x̂)`, the reconstruction plus its
# error, so the model computes what it computed before, and an edit of the features still moves the output
# by exactly what it moves `x̂`. Without the error term the model reads `x̂` alone.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    clean_logits = model(prompt_ids)
    with model_with_sae(model, sae, use_error_term=True):
        with_error = model(prompt_ids)
    with model_with_sae(model, sae):
        without_error = model(prompt_ids)
torch.testing.assert_close(with_error, clean_logits, rtol=1e-4, atol=1e-3)
gap = (without_error - clean_logits).abs().max().item()
flipped = (without_error.argmax(-1) != clean_logits.argmax(-1)).float().mean().item()
assert gap > 0.5
print("with the error term, the logits equal the clean ones: True")
print("without it, the largest logit change exceeds 0.5:", gap > 0.5)

# %%
print(f"without the error term: largest logit change {gap:.2f}; the top token changes at "
      f"{100 * flipped:.0f}% of the {prompt_ids.shape[1]} positions")

# %% [markdown]
# **Ablation and steering** edit one feature at the SAE's `hook_sae_acts_post`, with the error term in, so
# only that feature changes: ablated, it is 0 at every position; steered, it is clamped to a fixed value at
# every position. The dashboard above steered to the package's default, `4 * peak` (`peak`: the largest
# activation its scan saw); a second run clamps to `10 * peak`. Greedy continuations of the prompt:

# %%
peak = digit_board.contexts[0].value
strong = feature_interventions(model, sae, DIGIT, steer_prompt, value=10 * peak, max_new_tokens=12)
assert strong["clean"] == digit_board.interventions["clean"]  # the same greedy run
board_runs = digit_board.interventions
runs = {"clean": board_runs["clean"], "ablated": board_runs["ablated"], "steered ×4": board_runs["steered"],
        "steered ×10": strong["steered"]}


def digit_share(text: str) -> float:
    return sum(c.isdigit() for c in text) / max(len(text), 1)


for label, text in runs.items():
    print(f"{label:>11}: {text!r}  (digit characters: {digit_share(text):.2f})")
print(f"peak activation {peak:.2f}; ablating the feature "
      + ("leaves the continuation unchanged" if runs["ablated"] == runs["clean"] else "changes the continuation"))
assert digit_share(runs["steered ×10"]) > digit_share(runs["clean"])

# %%
viz.intervention_texts(runs, prompt=steer_prompt, title=f"feature {DIGIT} ablated and steered")

# %% [markdown]
# Clamped hard enough, the digit feature turns the continuation towards digits (asserted: the share of
# digit characters in the strongest steered run exceeds the clean run's). The runs in between show how
# blunt clamping is: the text can leave ordinary prose without becoming digits. Whether ablating the
# feature changed the continuation is printed above; an ablation removes this one feature and keeps every
# other feature and the error term, so an unchanged continuation says this prompt's next tokens do not
# depend on it alone.
#
# ## Exercises
#
# **Exercise 1.** Another activation: a **JumpReLU** SAE keeps a pre-activation only where it exceeds the
# feature's own threshold, `f = pre · [pre > θ]` (and never a negative value). Write its `encode` from the
# weights; the check compares it with `llama3_lab.sae` on a random JumpReLU SAE.

# %%
jump = SAE(SAEConfig(d_in=D, d_sae=64, architecture="jumprelu", hook_name=HOOK), seed=1)
with torch.no_grad():
    generator = torch.Generator().manual_seed(1)
    for parameter in (jump.b_enc, jump.b_dec):
        parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    jump.threshold.copy_(0.05 * torch.rand(64, generator=generator))


def package_jumprelu(x, W_enc, b_enc, b_dec, threshold):
    return jump.encode(x)


weights = (jump.W_enc.detach(), jump.b_enc.detach(), jump.b_dec.detach(), jump.threshold.detach())

# %%
# NBVAL_CHECK_OUTPUT
def jumprelu_encode(x, W_enc, b_enc, b_dec, threshold):
    raise NotImplementedError  # your code here


check_exercise(jumprelu_encode, package_jumprelu, x / x.norm(dim=-1, keepdim=True), *weights)

# %% solution
# Solution to exercise 1: jumprelu_encode
# NBVAL_CHECK_OUTPUT
def jumprelu_encode_solution(x, W_enc, b_enc, b_dec, threshold):
    pre = (x - b_dec) @ W_enc + b_enc
    return torch.relu(pre) * (pre > threshold)


check_exercise(jumprelu_encode_solution, package_jumprelu, x / x.norm(dim=-1, keepdim=True), *weights)

# %% [markdown]
# **Exercise 2.** Splice by hand: return the logits of `tokens` when the residual at `HOOK` is replaced by the
# SAE's reconstruction (no error term), with a hook of your own (`model.run_with_hooks(tokens,
# fwd_hooks=[(HOOK, fn)])`, `fn(activation, hook)` returning the replacement). The check compares with
# `model_with_sae`.

# %%
def package_splice(tokens):
    with torch.no_grad(), model_with_sae(model, sae):
        return model(tokens)


# %%
# NBVAL_CHECK_OUTPUT
def spliced_logits(tokens):
    raise NotImplementedError  # your code here


check_exercise(spliced_logits, package_splice, prompt_ids)

# %% solution
# Solution to exercise 2: spliced_logits
# NBVAL_CHECK_OUTPUT
def spliced_logits_solution(tokens):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda resid, hook: sae(resid))])


check_exercise(spliced_logits_solution, package_splice, prompt_ids)

# %% [markdown]
# ## What to remember
# - An SAE writes each activation as `b_dec` plus a few scaled dictionary rows: encode
#   `(x − b_dec) @ W_enc + b_enc`, keep the top `k` (TopK), decode `f @ W_dec + b_dec`.
# - Judge it on held-out text by explained variance, L0, dead fraction and, above all, the CE loss
#   recovered when the model reads the reconstruction.
# - "Feature N means X" is a claim: measure precision and recall against the category, and look at the top
#   contexts, the histogram and the logit effect (which is only the direct path).
# - Splice with the error term to edit features without changing anything else; without it you measure the
#   SAE's own error. Ablating and steering a feature tests what it does, not only where it fires.
