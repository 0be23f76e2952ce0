# %% [markdown]
# # 13 · Circuits at scale: a dataset, intervals, and cheap estimates
#
# Notebook 12 patched one clean/corrupted pair. A claim about a circuit needs more: a task the model
# actually solves, measured on a dataset, with error bars, and tools that scale past one forward per
# component. This notebook does that for the indirect-object task of Wang et al. (2022), "Interpretability
# in the wild" ("When Mary and John went to the store, John gave a drink to" → " Mary").
#
# **You will learn:**
# - to build a small dataset of clean/corrupted prompt pairs of equal length, and to measure how well the
#   model does the task (accuracy and the logit difference per example and on average);
# - **activation patching over a dataset**: per layer × position and per attention head, each example
#   patched on its own, with **95% bootstrap intervals**, and why patching at layer `l` can start at layer `l`;
# - **attribution patching**, the one-backward linear estimate of every head's patching effect, derived
#   for one head, compared with actual patching (scatter, correlation, time), and where it fails;
# - **integrated gradients** over the prompt's tokens with its completeness check, in the browser and
#   as a figure.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (30 layers × 9 heads; with 8 prompt
# pairs the 345 patched runs of the batch take about two minutes on a 2-core CPU). With
# `LLAMA3_LAB_WEIGHTS` pointing at a Llama 3 checkpoint and a CUDA GPU, the same cells run Llama 3 on CUDA
# in bf16 (32 layers × 32 heads); the claims about which heads matter are checked for SmolLM2 only, and
# checked outputs are SmolLM2's.

# %%
import time
import warnings

import torch
from matplotlib.figure import Figure

from llama3_lab import LlamaConfig, LlamaModel, analysis, viz
from llama3_lab.gradients import run_with_cache_and_grads
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import TokenValuesView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
L, H = cfg.num_hidden_layers, cfg.num_attention_heads
# The same logits computed two ways (a full forward, or from a layer on) agree to float32 rounding; bf16's
# rounding is a thousand times coarser.
TOL = dict(atol=1e-3, rtol=1e-4) if nb.dtype == torch.float32 else dict(atol=0.5, rtol=0.05)

# %% [markdown]
# ## 1. A task the model solves
#
# Each prompt names two people, then repeats one of them (the subject, S) as the giver; the answer is the
# other one, the indirect object (IO). Half the prompts name the IO first and half second, so "the first
# name" is never the rule. The **corrupted** prompt differs in one token: the giver is the IO, which makes
# the *other* name the answer. Names are single tokens, so every clean and corrupted prompt has the same
# length and positions line up (batches of prompts of different lengths, with padding, are not used here:
# every prompt below has the same number of tokens, which the cell checks). Every prompt starts with BOS,
# added explicitly (`prepend_bos=True`: SmolLM2's tokenizer adds none by itself, Llama 3's does): it gives
# the model its usual attention sink, as the IOI prompts of the literature start with GPT-2's
# `<|endoftext|>`, and it lets integrated gradients (below) leave the sink out of the attribution.

# %%
# NBVAL_CHECK_OUTPUT
templates = [
    "When{A} and{B} went to the store,{S} gave a drink to",
    "When{A} and{B} went to the park,{S} gave a ball to",
    "When{A} and{B} went to the office,{S} gave a letter to",
    "When{A} and{B} went to the beach,{S} gave a towel to",
]
name_pairs = [(" Mary", " John"), (" Tom", " Anna"), (" Sarah", " David"), (" Paul", " Kate"),
              (" Lisa", " Mark"), (" Peter", " Emma"), (" Alice", " Jack"), (" James", " Lucy")]  # (IO, S)
assert all(len(tok.encode(name)) == 1 for pair in name_pairs for name in pair), "names must be single tokens"
clean_texts, corrupted_texts = [], []
for i, (io, s) in enumerate(name_pairs):
    first, second = (io, s) if i % 2 == 0 else (s, io)
    clean_texts.append(templates[i % 4].format(A=first, B=second, S=s))
    corrupted_texts.append(templates[i % 4].format(A=first, B=second, S=io))
clean_ids = model.to_tokens(clean_texts, prepend_bos=True)  # [N, P]: equal lengths, BOS first
corrupted_ids = model.to_tokens(corrupted_texts, prepend_bos=True)
io_ids = torch.tensor([tok.encode(io)[0] for io, _ in name_pairs], device=model.device)
s_ids = torch.tensor([tok.encode(s)[0] for _, s in name_pairs], device=model.device)
N, P = clean_ids.shape
S2 = int((clean_ids != corrupted_ids).any(0).nonzero()[0])  # the one position where the pair differs
print(f"N = {N} pairs of {P} tokens; they differ only at position {S2}:",
      (clean_ids != corrupted_ids).any(0).nonzero().flatten().tolist())
for i in (0, 1):
    print(f"  clean: {clean_texts[i]!r} -> {name_pairs[i][0]!r}\n  corrupted: {corrupted_texts[i]!r} -> {name_pairs[i][1]!r}")

# %% [markdown]
# The metric is the **logit difference** at the last position, `logit(IO) − logit(S)`, one number per
# row: positive when the model prefers the right name. Each row has its own two names, so the metric reads
# each row's ids (the package's `logit_diff_metric` takes one pair of ids for the whole batch; for row 0
# alone the two agree). Methods that need one number (a gradient) use the mean over rows.

# %%
# NBVAL_CHECK_OUTPUT
def logit_diff_rows(logits: torch.Tensor) -> torch.Tensor:
    """[N]: logit(IO) − logit(S) at the last position of each row (each row has its own names)."""
    last = logits[:, -1].float()
    return last.gather(-1, io_ids[:, None])[:, 0] - last.gather(-1, s_ids[:, None])[:, 0]


def mean_logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return logit_diff_rows(logits).mean()


with torch.no_grad():
    clean_logits, corrupted_logits = model(clean_ids), model(corrupted_ids)
clean_diff, corrupted_diff = logit_diff_rows(clean_logits).cpu(), logit_diff_rows(corrupted_logits).cpu()
row0 = analysis.logit_diff_metric(int(io_ids[0]), int(s_ids[0]))(clean_logits[:1])
torch.testing.assert_close(row0.float().cpu(), clean_diff[0])
clean_accuracy = (clean_logits[:, -1].argmax(-1) == io_ids).float().mean().item()
corrupted_accuracy = (corrupted_logits[:, -1].argmax(-1) == s_ids).float().mean().item()  # its answer is S
print("logit(IO) − logit(S), clean:    ", fmt(clean_diff, 2), " mean", fmt(clean_diff.mean(), 2))
print("logit(IO) − logit(S), corrupted:", fmt(corrupted_diff, 2), " mean", fmt(corrupted_diff.mean(), 2))
print(f"top-1 is the right name: clean {clean_accuracy:.0%}, corrupted {corrupted_accuracy:.0%}")
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert clean_accuracy == 1.0 and corrupted_accuracy == 1.0
    assert (clean_diff > 3).all() and (corrupted_diff < -3).all()

# %% [markdown]
# SmolLM2 solves the task: the right name is its top prediction in every clean prompt, and by more than
# 3 logits each time (a factor of e³ ≈ 20 in probability between the two names); in every corrupted prompt
# the preference flips by as much. The first prompt's top candidates:

# %%
top = analysis.top_k_tokens(clean_logits[0, -1], tok, k=6)
viz.topk_bars(top.strings, top.probs, highlight=name_pairs[0][0], title=repr(clean_texts[0]))

# %% [markdown]
# ## 2. Where the answer lives: the residual stream, layer × position, over the dataset
#
# Patch the clean `resid_pre` of layer `l` at one position into the corrupted run and measure, per row,
# the **normalised effect** `(patched − corrupted) / (clean − corrupted)`: 0 = nothing restored, 1 = the
# clean answer back (`analysis.normalized_effect`). Two facts make it affordable:
#
# - before position `S2` the clean and corrupted prompts are the same tokens, so with causal attention
#   their residuals are identical there (checked below) and patching them restores exactly 0;
# - patching layer `l` changes nothing below it, so the run can start from the corrupted residual
#   entering layer `l` instead of from the tokens (`run_from` below): on average half a forward per cell.
#
# `analysis.patching_over_dataset` does the same pair by pair with full forwards, `L × P` of them per pair:
# here 30 × 15 × 8 = 3,600 forwards for the grid, too slow for this notebook. Our batched, per-row
# version is checked against it on a tiny random model, and against `analysis.patch_resid` on SmolLM2.

# %%
def patching_cache(model: LlamaModel, ids: torch.Tensor):
    """resid_pre and attn z of every layer, for pasting."""
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith(("hook_resid_pre", "attn.hook_z")))
    return cache


def run_from(model: LlamaModel, layer: int, resid_pre: torch.Tensor, hooks=()) -> torch.Tensor:
    """Logits [N, 1, V] at the last position, from the residual entering ``layer`` [N, P, D] (layers below are skipped)."""
    cos, sin = model.rope(0, resid_pre.shape[1])
    x = resid_pre
    with torch.no_grad(), model.hooks(hooks):
        for block in model.blocks[layer:]:
            x = block(x, cos, sin)
        return model.unembed(model.ln_final(x[:, -1:]))


def patch_resid_rows(model, clean, corrupted, metric_rows, layers, positions) -> torch.Tensor:
    """[layers, positions, N]: the metric of each corrupted row with the clean resid_pre pasted at one (layer, position)."""
    result = torch.zeros(len(layers), len(positions), corrupted["resid_pre", 0].shape[0])
    for i, layer in enumerate(layers):
        for j, position in enumerate(positions):
            resid = corrupted["resid_pre", layer].clone()
            resid[:, position] = clean["resid_pre", layer][:, position]
            result[i, j] = metric_rows(run_from(model, layer, resid)).float().cpu()
    return result


def patch_heads_rows(model, clean, corrupted, metric_rows) -> torch.Tensor:
    """[L, H, N]: the metric of each corrupted row with one head's clean output z pasted in at every position."""
    n_layers, n_heads = model.cfg.num_hidden_layers, model.cfg.num_attention_heads
    result = torch.zeros(n_layers, n_heads, corrupted["resid_pre", 0].shape[0])
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(n_heads):

            def paste(z: torch.Tensor, hook, name=name, head=head) -> torch.Tensor:
                z = z.clone()  # [N, P, H, d]
                z[:, :, head] = clean[name][:, :, head]
                return z

            result[layer, head] = metric_rows(run_from(model, layer, corrupted["resid_pre", layer], [(name, paste)])).float().cpu()
    return result


def normalized_rows(patched: torch.Tensor, clean_values: torch.Tensor, corrupted_values: torch.Tensor) -> torch.Tensor:
    """[N, ...]: analysis.normalized_effect of each row (patched is [..., N])."""
    return torch.stack([analysis.normalized_effect(patched[..., i], float(clean_values[i]), float(corrupted_values[i]))
                        for i in range(patched.shape[-1])])


clean_cache, corrupted_cache = patching_cache(model, clean_ids), patching_cache(model, corrupted_ids)
torch.testing.assert_close(run_from(model, 0, corrupted_cache["resid_pre", 0])[:, -1], corrupted_logits[:, -1], **TOL)
assert all(torch.equal(clean_cache["resid_pre", l][:, :S2], corrupted_cache["resid_pre", l][:, :S2]) for l in range(L))

# %% [markdown]
# The batched, per-row patching against the package, first on a tiny random Llama (2 layers, 8 heads),
# where `patching_over_dataset` is quick: the same per-example effects and the same intervals.

# %%
tiny = LlamaModel.from_config(LlamaConfig.tiny(max_position_embeddings=64), seed=0, device="cpu", dtype=torch.float32)
generator = torch.Generator().manual_seed(0)
tiny_clean = torch.randint(3, 97, (4, 6), generator=generator)
tiny_corrupted = tiny_clean.clone()
tiny_corrupted[:, 2] = torch.randint(3, 97, (4,), generator=generator)
tiny_rows = lambda logits: logits[:, -1, 5] - logits[:, -1, 7]  # noqa: E731
tiny_pairs = [(tiny_clean[i : i + 1], tiny_corrupted[i : i + 1]) for i in range(4)]
with torch.no_grad():
    tiny_clean_values, tiny_corrupted_values = tiny_rows(tiny(tiny_clean)), tiny_rows(tiny(tiny_corrupted))
tiny_clean_cache, tiny_corrupted_cache = patching_cache(tiny, tiny_clean), patching_cache(tiny, tiny_corrupted)
for kind in ("resid", "heads"):
    package = analysis.patching_over_dataset(tiny, tiny_pairs, analysis.logit_diff_metric(5, 7), kind=kind)
    if kind == "resid":
        ours = patch_resid_rows(tiny, tiny_clean_cache, tiny_corrupted_cache, tiny_rows, range(2), range(6))
    else:
        ours = patch_heads_rows(tiny, tiny_clean_cache, tiny_corrupted_cache, tiny_rows)
    ours = analysis.bootstrap_ci(normalized_rows(ours, tiny_clean_values, tiny_corrupted_values))
    for field in ("per_example", "mean", "low", "high"):
        torch.testing.assert_close(getattr(ours, field), getattr(package, field), atol=1e-4, rtol=1e-4)
print("per-row patching == analysis.patching_over_dataset on the tiny model, for resid and heads")

# %% [markdown]
# Then one cell on SmolLM2 against `analysis.patch_resid`, which patches the whole batch at once and
# measures the mean metric: the mean of our rows.

# %%
# NBVAL_CHECK_OUTPUT
layers = list(range(0, L, 2))  # every second layer: the picture is smooth in depth
positions = list(range(S2, P))  # earlier positions restore exactly 0 (identical residuals)
resid_rows = patch_resid_rows(model, clean_cache, corrupted_cache, logit_diff_rows, layers, positions)  # [layers, positions, N]
package_cell = analysis.patch_resid(model, clean_ids, corrupted_ids, mean_logit_diff, layers=[layers[10]], positions=[P - 1])
torch.testing.assert_close(package_cell[0, 0], resid_rows[10, -1].mean(), **TOL)
resid_effects = torch.zeros(N, len(layers), P, dtype=torch.float64)  # [N, layers, P], 0 before S2
resid_effects[:, :, S2:] = normalized_rows(resid_rows, clean_diff, corrupted_diff)
resid_estimate = analysis.bootstrap_ci(resid_effects)  # mean and 95% interval over the 8 examples
show_shapes(resid_rows=resid_rows, resid_effects=resid_effects, mean=resid_estimate.mean)
labels = tok.token_strings(clean_ids[0].tolist())
for name, position in (("S2", S2), ("last", P - 1)):
    print(f"fraction restored at {name} {labels[position]!r}, by layer {layers[0]}..{layers[-1]}:", fmt(resid_estimate.mean[:, position], 2))

# %% [markdown]
# The interval of one cell, from scratch: draw 10,000 resamples of the 8 examples (with replacement), take
# each resample's mean, and read the 2.5% and 97.5% quantiles. Drawn with the same seeded generator in
# the same chunks of 1,000 as `analysis.bootstrap_ci`, the resamples are the same, so the interval is
# identical.

# %%
cell = resid_effects[:, 11, P - 1]  # layer 22 at the last position: the answer in transit
bootstrap_generator = torch.Generator().manual_seed(0)
resampled_means = torch.cat([cell[torch.randint(0, N, (1000, N), generator=bootstrap_generator)].mean(1) for _ in range(10)])
low, high = torch.quantile(resampled_means, torch.tensor([0.025, 0.975], dtype=torch.float64))
torch.testing.assert_close(torch.stack([low, high]), torch.stack([resid_estimate.low[11, P - 1], resid_estimate.high[11, P - 1]]))
print(f"layer {layers[11]}, last position: mean {cell.mean():.2f}, 95% interval [{low:.2f}, {high:.2f}]")

# %%
# NBVAL_CHECK_OUTPUT
mean, lower = resid_estimate.mean, resid_estimate.low
early = [i for i, l in enumerate(layers) if l <= 18]
late = [i for i, l in enumerate(layers) if l >= 26]
print("layers whose interval at S2 is above 0.9:", [layers[i] for i in range(len(layers)) if lower[i, S2] > 0.9])
print("layers whose interval at the last position is above 0.8:", [layers[i] for i in range(len(layers)) if lower[i, P - 1] > 0.8])
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert labels[S2] == " John" and S2 == 10
    assert (lower[early, S2] > 0.9).all() and (mean[early, P - 1].abs() < 0.05).all()  # first S2 carries it all
    assert (lower[late, P - 1] > 0.8).all() and (mean[late, S2].abs() < 0.05).all()  # then the last position
    assert (mean[:, S2 + 2 : P - 1].abs() < 0.01).all()  # ' a', ' drink': nothing
    middle = [layers.index(l) for l in (20, 22, 24)]
    assert (mean[middle, S2].diff() < 0).all() and (mean[middle, P - 1].diff() > 0).all()  # it moves across
    assert 0.3 < mean[layers.index(22), S2] < 0.7 and 0.3 < mean[layers.index(22), P - 1] < 0.7  # half-way at 22
    assert (mean[layers.index(22) :, S2 + 1] > 0.03).all() and (mean[:, S2 + 1] < 0.15).all()  # a little on ' gave'

# %% [markdown]
# In SmolLM2 the information that decides the answer sits on the repeated name (`S2`) up to layer 18,
# with intervals above 0.9, and at the last position from layer 26, with intervals above 0.8. In between
# it moves across: less on `S2` and more at the end at each of layers 20, 22 and 24, about half in each
# place at layer 22; from layer 22 on a little of it (under 0.15) also sits on ` gave`. The tokens
# between them (` a`, ` drink`) never carry it. Hatched cells are those whose interval contains 0.

# %%
viz.effect_ci_heatmap(resid_estimate.mean, resid_estimate.low, resid_estimate.high,
                      "patching resid_pre: fraction of the logit difference restored",
                      x_labels=labels, xlabel="position (first clean prompt)", y_labels=[str(l) for l in layers],
                      label="fraction restored", annotate_min=0.3, figsize=(7.2, 4.6))

# %% [markdown]
# ## 3. Which heads: actual patching, and its linear estimate
#
# Paste one head's clean output `z` (every position) into the corrupted run: `L × H` = 270 patched runs
# of the batch. **Attribution patching** (Nanda 2023) estimates all of them at once to first order:
#
# `metric(corrupted, z_h ← z_h^clean) − metric(corrupted) ≈ Σ (z_h^clean − z_h^corrupted) · ∂metric/∂z_h`,
#
# the gradient taken in the corrupted run, summed over positions and head dimensions: one clean forward,
# one corrupted forward and one backward (`analysis.attribution_patching`). Both run in the next cell,
# timed against each other.

# %%
start = time.perf_counter()
attribution = analysis.attribution_patching(model, clean_ids, corrupted_ids, mean_logit_diff)
attribution_seconds = time.perf_counter() - start
start = time.perf_counter()
head_rows = patch_heads_rows(model, clean_cache, corrupted_cache, logit_diff_rows)  # [L, H, N]
patching_seconds = time.perf_counter() - start
print(f"actual patching of {L * H} heads took {patching_seconds / attribution_seconds:.0f}× the time of "
      "attribution patching (this run)")
assert patching_seconds > attribution_seconds

# %% [markdown]
# The per-row loop checked on one layer against `analysis.patch_head_z` (whole batch, mean metric, full
# forwards), then the per-example effects and their intervals:

# %%
# NBVAL_CHECK_OUTPUT
package_layer = analysis.patch_head_z(model, clean_ids, corrupted_ids, mean_logit_diff, layers=[23])
torch.testing.assert_close(package_layer[0], head_rows[23].mean(-1), **TOL)
head_effects = normalized_rows(head_rows, clean_diff, corrupted_diff)  # [N, L, H]
head_estimate = analysis.bootstrap_ci(head_effects)
show_shapes(head_rows=head_rows, head_effects=head_effects)
ranked = head_estimate.mean.flatten().abs().argsort(descending=True)[:6]
for index in ranked.tolist():
    layer, head = divmod(index, H)
    print(f"head {layer}.{head}: {head_estimate.mean[layer, head]:+.2f}  "
          f"[{head_estimate.low[layer, head]:+.2f}, {head_estimate.high[layer, head]:+.2f}]")

# %% [markdown]
# What do the strongest heads read? Their attention from the last position, averaged over the clean
# prompts: on the indirect object's name, the subject's first mention (S1) or its repetition (S2).

# %%
# NBVAL_CHECK_OUTPUT
io_position = (clean_ids[:, :S2] == io_ids[:, None]).int().argmax(1).cpu()  # where each row names the IO
s1_position = (clean_ids[:, :S2] == s_ids[:, None]).int().argmax(1).cpu()  # and the subject, first time
with torch.no_grad():
    _, pattern_cache = model.run_with_cache(clean_ids, names_filter=[f"blocks.{l}.attn.hook_pattern" for l in (20, 23, 24)])
rows = torch.arange(N)
reads = {}
for layer, head in ((23, 3), (20, 0), (24, 4)):
    last_query = pattern_cache["pattern", layer][:, head, -1].float().cpu()  # [N, P]
    reads[layer, head] = dict(IO=last_query[rows, io_position].mean(), S1=last_query[rows, s1_position].mean(), S2=last_query[:, S2].mean())
    print(f"head {layer}.{head}: effect {head_estimate.mean[layer, head]:+.2f}; attention from the last position:", fmt(reads[layer, head], 2))
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert [divmod(i, H) for i in ranked[:2].tolist()] == [(23, 3), (20, 0)]
    for layer, head in ((23, 3), (20, 0)):
        assert head_estimate.low[layer, head] > 0.2 and reads[layer, head]["S2"] > 0.5
    assert head_estimate.high[24, 4] < 0 and reads[24, 4]["IO"] > 0.5
    assert head_estimate.high[29, 0] < 0 and head_estimate.low[29, 1] > 0.2

# %% [markdown]
# In SmolLM2 the two heads that restore most, 23.3 and 20.0 (intervals above 0.2), attend from the last
# position to the repeated name `S2`: they read *which name came twice*, the signal that the answer is the
# other one, as the S-inhibition heads do in Wang et al.'s GPT-2 circuit. Head 24.4 attends to the
# indirect object itself and has a *negative* effect (its interval is below 0): its clean output lowers
# the logit difference, like the negative name-mover heads found in GPT-2 small. In the last layer, 29.1
# helps and 29.0 hurts. Patching a head is a statement about this dataset and this corruption; the
# intervals say how much the 8 examples agree, not whether the circuit is complete.

# %%
viz.effect_ci_heatmap(head_estimate.mean, head_estimate.low, head_estimate.high,
                      "patching each head's z: fraction restored (mean of 8)", label="fraction restored",
                      annotate_min=0.15, figsize=(5.2, 6.0))

# %% [markdown]
# ### The attribution estimate for one head, from scratch
#
# The formula above, written out for head 23.3: the clean and corrupted `z` of that head, the gradient of
# the mean logit difference with respect to `z` in the corrupted run
# (`llama3_lab.gradients.run_with_cache_and_grads`: one forward and one backward with the weights frozen),
# their product summed over rows, positions and the head dimension.

# %%
# NBVAL_CHECK_OUTPUT
layer, head = 23, 3
z_name = f"blocks.{layer}.attn.hook_z"
_, corrupted_values, gradients = run_with_cache_and_grads(model, corrupted_ids, mean_logit_diff, names_filter=[z_name])
delta_z = clean_cache[z_name][:, :, head].float() - corrupted_values[z_name][:, :, head].float()  # [N, P, d]
estimate_by_hand = (delta_z * gradients[z_name][:, :, head].float()).sum()
torch.testing.assert_close(estimate_by_hand, attribution.heads[layer, head].float(), atol=1e-4, rtol=1e-4)
actual_change = head_rows[layer, head].mean() - corrupted_diff.mean()
print(f"head {layer}.{head}: estimated change of the mean logit difference {estimate_by_hand:.3f}, actual {actual_change:.3f}")

# %% [markdown]
# Every head: the estimate against the actual change, both as a fraction of the mean clean − corrupted
# gap (the actual side is the patched mean, not the mean of per-row fractions, so both sides measure the
# same number).

# %%
# NBVAL_CHECK_OUTPUT
gap = clean_diff.mean() - corrupted_diff.mean()
actual_fraction = (head_rows.mean(-1) - corrupted_diff.mean()) / gap  # [L, H]
estimated_fraction = attribution.normalized("heads").float().cpu()  # [L, H]
correlation = viz.pearson_r(estimated_fraction, actual_fraction)
assert abs(correlation - float(torch.corrcoef(torch.stack([estimated_fraction.flatten(), actual_fraction.flatten()]))[0, 1])) < 1e-5
print(f"correlation of attribution and actual patching over {L * H} heads: {correlation:.2f}")
missed = (actual_fraction - estimated_fraction).flatten().argsort(descending=True)[:2]
for index in missed.tolist():
    layer, head = divmod(index, H)
    print(f"head {layer}.{head}: actual {actual_fraction[layer, head]:+.2f}, estimated {estimated_fraction[layer, head]:+.2f}")
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert correlation > 0.8
    assert sorted(divmod(i, H) for i in missed.tolist()) == [(17, 4), (20, 0)]
    assert all(actual_fraction[l, h] > 0.15 and estimated_fraction[l, h].abs() < 0.05 for l, h in ((17, 4), (20, 0)))
    assert (estimated_fraction[23, 3] - actual_fraction[23, 3]).abs() < 0.15

# %% [markdown]
# In SmolLM2 the estimate correlates above 0.8 with the truth, and for most heads the points sit on the
# identity line; it gets the strongest head, 23.3, within 0.15 of its actual fraction. But it nearly
# misses two heads whose actual effect is large: 20.0 and 17.4, estimated near 0.

# %%
viz.attribution_scatter(estimated_fraction, actual_fraction, title="each head: attribution vs actual patching",
                        xlabel="actual patching (fraction restored)", ylabel="attribution patching (estimate)")

# %% [markdown]
# Why? A first-order estimate sees only the slope at the corrupted run. Move a head's output only part of
# the way, `z ← z_corrupted + α (z_clean − z_corrupted)`, and watch the effect grow with α: a head the
# estimate gets right grows in proportion, a head it misses hardly moves at first.

# %%
# NBVAL_CHECK_OUTPUT
alphas = (0.25, 0.5, 0.75, 1.0)
partial = {}
for layer, head in ((23, 3), (20, 0), (17, 4)):
    name = f"blocks.{layer}.attn.hook_z"
    fractions = []
    for alpha in alphas:

        def part_way(z: torch.Tensor, hook, name=name, head=head, alpha=alpha) -> torch.Tensor:
            z = z.clone()
            z[:, :, head] += alpha * (clean_cache[name][:, :, head] - z[:, :, head])
            return z

        patched = logit_diff_rows(run_from(model, layer, corrupted_cache["resid_pre", layer], [(name, part_way)])).mean().cpu()
        fractions.append(float((patched - corrupted_diff.mean()) / gap))
    partial[layer, head] = fractions
    print(f"head {layer}.{head}: fraction restored at α = {alphas}:", fmt(fractions, 3))
if not nb.is_llama3:  # what the text below says about SmolLM2
    assert 0.15 < partial[23, 3][0] / partial[23, 3][-1] < 0.35  # about a quarter at a quarter of the way
    for layer, head in ((20, 0), (17, 4)):
        assert partial[layer, head][0] < 0.1 * partial[layer, head][-1]  # almost nothing at first
        assert partial[layer, head][1] < 0.3 * partial[layer, head][-1]  # under a third half-way

# %% [markdown]
# In SmolLM2, a quarter of the way restores about a quarter of head 23.3's effect; for heads 20.0 and 17.4
# it restores under a tenth, and half-way under a third: their effect appears only once their output has
# changed a lot, so the slope at the corrupted run (attribution patching) says almost nothing about them.
# Use attribution patching to rank 270 (or 1,024) candidates in one backward pass, then confirm the top
# ones with actual patching, never the other way round.

# %% [markdown]
# ## 4. Which prompt tokens: integrated gradients
#
# Patching asks about components; **integrated gradients** ask about the input. Walk the embeddings from
# a baseline (the end-of-document token at every position but the BOS) to the prompt, average the
# gradient of the logit difference along the way, and multiply by the change: one number per token, and
# (the **completeness** check) the numbers add up to `f(prompt) − f(baseline)`. The integral is a
# quadrature, so too few nodes break completeness; `analysis.integrated_gradients` reports the gap
# (`convergence_delta`) and warns when it is a sizeable part of the change.

# %%
# NBVAL_CHECK_OUTPUT
target = analysis.logit_difference(int(io_ids[0]), int(s_ids[0]))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    coarse = analysis.integrated_gradients(model, clean_ids[:1], target, steps=16, batch_size=16)
ig = analysis.integrated_gradients(model, clean_ids[:1], target, steps=64, batch_size=32)
change = float(ig.target[0] - ig.baseline_target[0])
coarse_gap, gap_64 = float(coarse.convergence_delta[0]) / change, float(ig.convergence_delta[0]) / change
print(f"f(prompt) − f(baseline) = {change:.2f}; sum of the attributions {ig.values.sum():.2f}")
print(f"completeness gap: {coarse_gap:.1%} of the change with 16 nodes (warned: {len(caught) > 0}), "
      f"{gap_64:.1%} with 64")
assert len(caught) == (abs(coarse_gap) > 0.01)  # the package warns exactly when the gap exceeds 1%
gradient_input = analysis.gradient_x_input(model, clean_ids[:1], target)  # the one-backward shortcut
ig_values, gxi_values = ig.values[0].cpu(), gradient_input.values[0].cpu()
print("largest integrated gradients:", [(labels[i], round(float(ig_values[i]), 2)) for i in ig_values.argsort(descending=True)[:3].tolist()])
if not nb.is_llama3:  # what the text below says about SmolLM2 (float32; bf16 gradients are coarser)
    assert abs(coarse_gap) > 0.1 and abs(gap_64) < 0.01
    assert set(ig_values.argsort(descending=True)[:2].tolist()) == {2, S2}  # ' Mary' (IO) and ' John' (S2)
    assert ig_values[4] < 0 and ig_values[3] < 0  # ' John' (S1) and ' and' count against
    assert int(gxi_values.argmax()) == 2 and set(gxi_values.argsort(descending=True)[:3].tolist()) == {0, 1, 2}
    assert gxi_values[S2] < ig_values[S2] / 2

# %% [markdown]
# In SmolLM2, with 16 nodes the attributions miss the change by more than 10% (and the package warns);
# with 64 the gap is under 1%. The two names that decide the answer carry the largest attributions in SmolLM2: the
# indirect object ` Mary` and the repeated ` John`; the first ` John` and ` and` count against it.
# Gradient × input, the one-backward shortcut (the gradient at the prompt times the embedding), tells
# another story: its three largest values are on ` Mary`, the BOS and `When`, and the repeated ` John`
# gets less than half of its integrated gradient. It has no completeness to check it by. Hover the
# tokens for both:

# %%
# NBVAL_IGNORE_OUTPUT
token_view = TokenValuesView(labels, {"integrated gradients": ig_values, "gradient × input": gxi_values})
token_view

# %%
probe = TokenValuesView(labels, {"integrated gradients": ig_values, "gradient × input": gxi_values})
probe.channel = "gradient × input"  # a second view: the one shown above keeps its channel
torch.testing.assert_close(torch.from_numpy(probe.arrays["integrated gradients"]), ig_values)
assert token_view.channel == "integrated gradients"

# %% [markdown]
# The same numbers as a figure, integrated gradients above gradient × input:

# %%
def attribution_figure() -> Figure:
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    top_ax, bottom_ax = fig.subplots(2, 1, sharex=True)
    viz.token_attribution(labels, ig_values, ax=top_ax, label="IG", target_change=change,
                          title="integrated gradients of logit(' Mary') − logit(' John'), 64 nodes")
    viz.token_attribution(labels, gxi_values, ax=bottom_ax, label="grad × input", title="gradient × input")
    return fig


attribution_figure()

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `resid_attribution(layer, position)`: the attribution-patching estimate for the
# residual stream entering `layer` at `position`, `Σ (resid_clean − resid_corrupted) · ∂metric/∂resid`
# over rows and the model dimension, from the activations and gradients below. The check compares with
# `analysis.attribution_patching`'s `resid` estimate at layer 14, position `S2`.

# %%
# NBVAL_CHECK_OUTPUT
resid_name = "blocks.14.hook_resid_pre"
_, corrupted_resid, resid_gradients = run_with_cache_and_grads(model, corrupted_ids, mean_logit_diff, names_filter=[resid_name])


def resid_attribution(layer: int, position: int) -> torch.Tensor:
    raise NotImplementedError  # your code here


package_resid = lambda layer, position: attribution.resid[layer, position].float()  # noqa: E731
check_exercise(resid_attribution, package_resid, 14, S2, atol=1e-4, rtol=1e-4)

# %% solution
# Solution to exercise 1: resid_attribution
# NBVAL_CHECK_OUTPUT
def resid_attribution_solution(layer: int, position: int) -> torch.Tensor:
    name = f"blocks.{layer}.hook_resid_pre"
    delta = clean_cache[name][:, position].float() - corrupted_resid[name][:, position].float()  # [N, D]
    return (delta * resid_gradients[name][:, position].float()).sum()


check_exercise(resid_attribution_solution, package_resid, 14, S2, atol=1e-4, rtol=1e-4)

# %% [markdown]
# **Exercise 2.** Write `effects_per_example(patched, clean, corrupted)`: from patched metrics `[L, H, N]`
# and each row's clean and corrupted metric `[N]`, the normalised effects `[N, L, H]` (0 = corrupted,
# 1 = clean), without a loop. The check compares with `analysis.normalized_effect` applied row by row.

# %%
# NBVAL_CHECK_OUTPUT
def effects_per_example(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_exercise(effects_per_example, normalized_rows, head_rows, clean_diff, corrupted_diff, atol=1e-5, rtol=1e-5)

# %% solution
# Solution to exercise 2: effects_per_example
# NBVAL_CHECK_OUTPUT
def effects_per_example_solution(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    return ((patched - corrupted) / (clean - corrupted)).permute(2, 0, 1)


check_exercise(effects_per_example_solution, normalized_rows, head_rows, clean_diff, corrupted_diff, atol=1e-5, rtol=1e-5)

# %% [markdown]
# ## What to remember
# - First show the model does the task: accuracy and the logit difference per example, on a dataset of
#   equal-length clean/corrupted pairs that differ in one token.
# - Patch each example on its own and report the mean with a bootstrap interval; a cell whose interval
#   contains 0 is not evidence of anything.
# - Patching layer `l` can start at layer `l`; positions before the first difference restore exactly 0.
# - Attribution patching ranks every component from one backward pass and correlates well overall, but
#   misses effects that only appear for large changes: confirm the top candidates with actual patching.
# - Integrated gradients attribute to input tokens and must add up to `f(x) − f(x′)`: print the gap, and
#   raise the number of nodes until it is small.
