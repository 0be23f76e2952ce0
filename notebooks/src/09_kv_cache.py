# %% [markdown]
# # 09 · The KV cache
#
# Generating `n` tokens with a plain forward pass per step recomputes the whole prefix every time:
# `O(n²)` work for `O(n)` new information. The KV cache stores each layer's keys and values once and
# only computes the new token at each step. It is the reason a chat model answers at a steady pace, and
# on long contexts it takes more memory than anything but the weights.
#
# **You will learn:**
# - *why* caching is allowed at all: with the causal mask, the keys and values of earlier positions never
#   change when the sequence grows (and without the mask they would);
# - what `llama3_lab.KVCache` holds and how it fills, step by step (`length`, `layer_keys`, shapes
#   `[B, K, T, d]`, keys stored **after** RoPE);
# - that cached decoding gives the same logits as recomputing everything (checked with `assert_close`);
# - the memory bill: `2 · L · K · d · bytes` per token, 131,072 B/token for Llama 3 8B in bf16, and what
#   grouped-query attention saves (×4 for Llama 3 8B, ×3 for SmolLM2);
# - the common mistake of rotating cached keys a second time, and what it does to the output.
#
# **Runs on:** the embedded SmolLM2-135M-Instruct on CPU, float32 (30 layers, 9 query heads sharing 3
# key/value heads, head dim 64). With `LLAMA3_LAB_WEIGHTS` pointing at a Llama 3 checkpoint and a CUDA GPU,
# the same cells run Llama 3 on CUDA in bf16 (comparisons then use bf16 tolerances); checked outputs are
# those of SmolLM2. The memory figures for Llama 3 8B come from its `config.json` numbers and need no
# weights.

# %%
import time

import torch
from einops import einsum, rearrange

from llama3_lab import KVCache, LlamaConfig, viz
from llama3_lab.model import apply_rotary
from llama3_lab.notebook import check_exercise, fmt, load_notebook_model, setup_notebook, show_shapes
from llama3_lab.views import StepperView

setup_notebook()

# %%
nb = load_notebook_model()
model, tok = nb.model, nb.tokenizer
cfg = model.cfg
L, H, K, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
tolerance = {} if nb.dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}  # bf16 on a GPU

# %% [markdown]
# ## 1. Why past keys and values do not change
#
# At layer `l`, position `t`'s key is `k_t = RoPE_t(W_k · ln1(x_t^l))`, and `x_t^l` (the residual stream)
# was built by earlier layers whose attention, because of the causal mask, only read positions `≤ t`.
# So nothing at position `t`, in any layer, depends on tokens after `t`. Appending tokens cannot change
# the keys and values already computed: we may store them and reuse them.
#
# Check it: run a prompt, then the same prompt with more tokens appended, and compare the keys and values
# of the shared prefix in every layer.

# %%
# NBVAL_CHECK_OUTPUT
prompt = "The capital of France is"
tokens = model.to_tokens(prompt)
more = model.to_tokens(" Paris. The capital of Italy is", prepend_bos=False)
longer = torch.cat([tokens, more], dim=1)
P = tokens.shape[1]
labels = tok.token_strings(longer[0].tolist())
print(P, "prompt tokens:", labels[:P])
print(longer.shape[1], "tokens after appending:", labels)


def keys_and_values(name: str) -> bool:
    return name.endswith(("attn.hook_rot_k", "attn.hook_v"))


with torch.no_grad():
    _, short_run = model.run_with_cache(tokens, names_filter=keys_and_values)
    _, long_run = model.run_with_cache(longer, names_filter=keys_and_values)
show_shapes(short_rot_k=short_run["rot_k", 0], long_rot_k=long_run["rot_k", 0])

# %% [markdown]
# Equal in all 30 layers. (Equal up to float rounding, not bit for bit: the matrix products are blocked
# differently for 6 and 14 rows, so the last bits differ, about 1e-5 on values of size ~10.)

# %%
for layer in range(L):
    torch.testing.assert_close(long_run["rot_k", layer][:, :P], short_run["rot_k", layer], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(long_run["v", layer][:, :P], short_run["v", layer], atol=1e-4, rtol=1e-4)
worst = max((long_run["rot_k", layer][:, :P] - short_run["rot_k", layer]).abs().max().item() for layer in range(L))
print(f"largest difference over all layers: {worst:.1e}")

# %% [markdown]
# ### Without the causal mask, nothing could be cached
#
# The mask is what makes this true. Remove it (let every position read every other, as a bidirectional
# encoder like BERT does) and the prefix's keys change from layer 1 on: in layer 1, position 0 has
# already read the appended tokens in layer 0. We remove the mask with a hook on `hook_attn_scores`
# that replaces the masked scores by the unmasked ones, recomputed from this layer's `rot_q` and `rot_k`.


# %%
def unmasked_run(ids: torch.Tensor):
    """A forward in which every position attends to every position (no causal mask)."""
    rotated = {}

    def keep(tensor, hook):
        rotated[hook.name] = tensor

    def unmask(scores, hook):  # scores [B H P P] with -inf above the diagonal
        layer = hook.name.split(".")[1]
        rot_q = rotated[f"blocks.{layer}.attn.hook_rot_q"]  # [B P H d]
        rot_k = rotated[f"blocks.{layer}.attn.hook_rot_k"].repeat_interleave(H // K, dim=2)  # [B P H d]
        return torch.einsum("bphd,bthd->bhpt", rot_q, rot_k) / d**0.5

    hooks = [(lambda n: n.endswith(("hook_rot_q", "hook_rot_k")), keep), (lambda n: n.endswith("hook_attn_scores"), unmask)]
    with torch.no_grad(), model.hooks(hooks):
        return model.run_with_cache(ids, names_filter=keys_and_values)[1]


bidirectional_short, bidirectional_long = unmasked_run(tokens), unmasked_run(longer)
change = [
    (bidirectional_long["rot_k", layer][:, :P] - bidirectional_short["rot_k", layer]).abs().max().item()
    for layer in range(L)
]
print("without the mask, largest change of the prefix keys, layers 0-4:", [f"{c:.1e}" for c in change[:5]])
assert change[0] < 1e-4 and min(change[1:]) > 1e-2

# %% [markdown]
# Layer 0's keys depend only on the token embeddings, so they stay put even without the mask; from layer 1 on
# they move by whole units. A bidirectional model must recompute everything when a token arrives, which is
# why encoders are not used for token-by-token generation.
#
# ## 2. Filling the cache, step by step
#
# `KVCache.allocate(model, max_length=...)` reserves, per layer, a keys tensor and a values tensor of shape
# `[B, K, T_max, d]`: batch, **KV heads** (3, not 9: grouped-query attention stores only the shared heads),
# positions, head dim. `cache.length` says how many positions are filled; `cache.layer_keys(l)` is a view of
# the filled part. `model(tokens, cache=cache)` places the tokens at positions `length, length + 1, ...`,
# writes their keys (after RoPE) and values, attends over everything filled, and advances `length`.

# %%
# NBVAL_CHECK_OUTPUT
cache = KVCache.allocate(model, batch_size=1, max_length=32)
print(cache)
print("keys per layer:", list(cache.keys[0].shape), " filled:", list(cache.layer_keys(0).shape))

# %% [markdown]
# **Prefill**: the whole prompt in one forward (6 positions at once, the efficient part). Then **decode**:
# one token per forward, the greedy choice fed back in. Each decode step feeds a `[1, 1]` tensor, and its
# logits are `[1, 1, V]`: only the new position is computed.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    logits = model(tokens, cache=cache)
    print(f"prefill: tokens {list(tokens.shape)} -> logits {list(logits.shape)}, length {cache.length}, layer_keys(0) {list(cache.layer_keys(0).shape)}")
    generated = tokens[0].tolist()
    step_logits = [logits[0, -1]]  # the prediction made at each step
    for step in range(8):
        next_token = int(step_logits[-1].argmax())
        generated.append(next_token)
        logits = model(torch.tensor([[next_token]], device=model.device), cache=cache)
        step_logits.append(logits[0, -1])
        if step < 3:
            print(f"decode {step}: fed {tok.token_strings([next_token])[0]!r:10} -> logits {list(logits.shape)}, length {cache.length}, layer_keys(0) {list(cache.layer_keys(0).shape)}")
print("text:", repr(tok.decode(generated[1:])))
print(cache)

# %% [markdown]
# What the cache stores is exactly what attention multiplies with: the keys **after** RoPE. Compare with
# an ordinary forward over the same 14 tokens (the last prediction, token 15, has not been fed yet):

# %%
# NBVAL_CHECK_OUTPUT
ids = torch.tensor([generated[: cache.length]], device=model.device)
with torch.no_grad():
    _, full_run = model.run_with_cache(ids, names_filter=keys_and_values)
for layer in range(L):
    torch.testing.assert_close(cache.layer_keys(layer), full_run["rot_k", layer].transpose(1, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache.layer_values(layer), full_run["v", layer].transpose(1, 2), atol=1e-4, rtol=1e-4)
show_shapes(cached_keys=cache.layer_keys(5), rot_k=full_run["rot_k", 5], as_bktd=full_run["rot_k", 5].transpose(1, 2))

# %% [markdown]
# ## 3. Cached logits = uncached logits
#
# The 9 predictions above (one from the prefill, one per decode step) must be exactly what one ordinary
# forward over all the tokens predicts at positions 5..13. One forward, no cache:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    full_logits = model(torch.tensor([generated], device=model.device))[0]
cached = torch.stack(step_logits)  # [9, V]
uncached = full_logits[P - 1 :]  # the predictions at positions P-1 .. end
show_shapes(cached=cached, uncached=uncached)
torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4, **tolerance)
print("same greedy tokens:", cached.argmax(-1).tolist() == uncached.argmax(-1).tolist())

# %% [markdown]
# The package's `generate` uses the same cache; greedy (`temperature=0`) it produces the same text:

# %%
# NBVAL_CHECK_OUTPUT
text = model.generate(prompt, max_new_tokens=8, temperature=0)
print(repr(text))
assert text.tokens == generated[P:]

# %% [markdown]
# What it buys: the uncached loop runs a forward over the whole sequence for every new token; the cached
# one, one position per step. The cell below times both loops on 16 new tokens and prints the ratio measured
# in that run (on a shared machine it changes from run to run, so it is not stored as a check). The saving
# grows with the length: the uncached step `t` costs `t` positions, the cached one costs one position plus
# reading `t` cached keys.


# %%
def greedy_uncached(ids: list[int], n: int) -> list[int]:
    """n greedy tokens, each from a full forward over the whole sequence so far."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids], device=model.device))[0, -1].argmax()))
    return ids


def greedy_cached(ids: list[int], n: int, before_each_step=None) -> list[int]:
    """n greedy tokens: prefill once, then one position per forward (``before_each_step(cache)`` if given)."""
    kv = KVCache.allocate(model, max_length=len(ids) + n)
    ids = list(ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device), cache=kv)
        for _ in range(n):
            ids.append(int(logits[0, -1].argmax()))
            if before_each_step is not None:
                before_each_step(kv)
            logits = model(torch.tensor([[ids[-1]]], device=model.device), cache=kv)
    return ids


start = time.perf_counter()
slow = greedy_uncached(tokens[0].tolist(), 16)
uncached_s = time.perf_counter() - start
start = time.perf_counter()
fast = greedy_cached(tokens[0].tolist(), 16)
cached_s = time.perf_counter() - start
assert fast == slow
print(f"16 tokens, same text: the uncached loop took {uncached_s / cached_s:.1f}× the time of the cached one (this run)")

# %% [markdown]
# ### What the new token attends to
#
# A decode step has one query and `length` keys: its pattern is a single row, `[B, H, 1, T]`. Cache the
# pattern of the next decode step (the package switches that layer to eager attention when the pattern is
# hooked) and check that the row equals the last row of the full, uncached pattern.

# %%
# NBVAL_CHECK_OUTPUT
LAYER = 8
step_cache = cache.clone()  # decode on a copy, the original stays at 14 positions
next_token = int(step_logits[-1].argmax())  # predicted at the last step, not fed yet
last_token = torch.tensor([[next_token]], device=model.device)
sequence = generated + [next_token]
with torch.no_grad():
    _, decode_run = model.run_with_cache(last_token, cache=step_cache, names_filter=f"blocks.{LAYER}.attn.hook_pattern")
    _, full_pattern_run = model.run_with_cache(torch.tensor([sequence], device=model.device), names_filter=f"blocks.{LAYER}.attn.hook_pattern")
row = decode_run["pattern", LAYER]
show_shapes(decode_pattern=row, full_pattern=full_pattern_run["pattern", LAYER])
torch.testing.assert_close(row[:, :, 0], full_pattern_run["pattern", LAYER][:, :, -1], atol=1e-5, rtol=1e-4)

# %%
viz.attention_heads_grid(row[0], tok.token_strings(sequence), title=f"layer {LAYER}: the new token's query over the cache", ncols=3)

# %% [markdown]
# ## 4. Memory: 2 · L · K · d · bytes per token
#
# Each token leaves, in every layer, one key and one value per KV head, each `d` numbers: `2 · L · K · d`
# numbers per token. Llama 3 8B (`LlamaConfig()` holds its `config.json` numbers): 2 · 32 · 8 · 128 = 65,536
# numbers, 131,072 bytes in bf16. Without grouped-query attention every one of the 32 query heads would
# have its own K/V head. The package's `cfg.kv_cache_bytes_per_token` must agree.

# %%
# NBVAL_CHECK_OUTPUT
def kv_bytes_per_token(config: LlamaConfig, bytes_per_number: int) -> int:
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * bytes_per_number


llama3_8b = LlamaConfig()
without_gqa = llama3_8b.replace(num_key_value_heads=llama3_8b.num_attention_heads)
for name, config in (("Llama 3 8B", llama3_8b), ("  without GQA", without_gqa)):
    per_token = kv_bytes_per_token(config, 2)
    assert per_token == config.kv_cache_bytes_per_token("bf16")
    full_context = config.kv_cache_bytes(8192, dtype="bf16")
    print(f"{name}: {per_token:,} B/token in bf16, {full_context / 2**30:.0f} GiB at 8,192 tokens")
gqa_saving = without_gqa.kv_cache_bytes_per_token() // llama3_8b.kv_cache_bytes_per_token()
print("GQA saves a factor", gqa_saving)
assert gqa_saving == llama3_8b.num_attention_heads // llama3_8b.num_key_value_heads == 4

# %% [markdown]
# The 8B's weights are 16 GB in bf16; a full 8,192-token context adds 1 GiB per sequence, a batch of 16 such
# sequences another 16 GiB. Llama 3.1's 128K context is 16 GiB of cache for a *single* sequence. The memory
# panel: weights flat, the KV cache growing linearly with the context (log-log axes), with and without GQA.

# %%
viz.config_breakdown(llama3_8b, title="Llama 3 8B: parameters and memory (bf16)")

# %% [markdown]
# SmolLM2-135M has 9 query heads sharing 3 KV heads (`G = 3`), so GQA saves a factor 3. Its own numbers, and
# the bytes the allocated cache above actually holds (float32 on this CPU, 4 bytes a number):

# %%
# NBVAL_CHECK_OUTPUT
smol = cfg
print(f"{nb.name}: L={L}, K={K}, d={d}")
print(f"  bf16: {smol.kv_cache_bytes_per_token('bf16'):,} B/token, without GQA {smol.replace(num_key_value_heads=H).kv_cache_bytes_per_token('bf16'):,}")
bytes_per_number = torch.finfo(nb.dtype).bits // 8
print(f"  {str(nb.dtype).removeprefix('torch.')}: {kv_bytes_per_token(smol, bytes_per_number):,} B/token")
assert cache.nbytes == cache.max_length * kv_bytes_per_token(smol, bytes_per_number)
print(f"  the cache above: {cache.max_length} positions x {kv_bytes_per_token(smol, bytes_per_number):,} B = {cache.nbytes:,} B")

# %%
viz.config_breakdown(smol, dtype="bf16", title=f"{nb.name}: parameters and memory (bf16)")

# %% [markdown]
# For the small model the cache would only overtake the weights (269 MB in bf16) at about 11,700 tokens, beyond
# its 8,192-token context; for the 8B the full context's 1 GiB is about a fifteenth of the weights. With large batches (serving) the cache dominates
# either way, which is why GQA, and later MLA and cache quantisation, exist.
#
# ## 5. Common mistake: rotating cached keys again
#
# The cache holds keys *after* RoPE. Code that stores rotated keys and then, at each step, applies RoPE to
# all the keys it attends over (as if they were raw) rotates each cached key a second time: key `t` is read
# at angle `2t·θ` instead of `t·θ`. Nothing crashes, shapes are right, position 0 is even correct (a
# rotation by 0); the relative positions the model learned are scrambled. Simulate the bug: before each
# decode step, rotate every cached key once more **and write it back**, as code that rotates the cache in
# place would. Then the damage compounds: each step turns key `t` by another `t·θ`, so a key that has been
# through `s` re-rotations sits at `(1 + s)·t·θ` (`2t·θ` only after the first). The cell after the
# function checks that on a prefilled cache.


# %%
def rotate_cached_keys_again(kv: KVCache) -> None:
    """The bug: apply RoPE to keys that are already rotated (every layer, every filled position)."""
    cos, sin = model.rope(0, kv.length)  # [T d] each, float32
    for layer in range(kv.n_layers):
        keys = kv.layer_keys(layer).transpose(1, 2)  # b k t d -> b t k d, what apply_rotary expects
        kv.keys[layer][:, :, : kv.length] = apply_rotary(keys, cos, sin).transpose(1, 2)


# %%
def rotated_by(keys: torch.Tensor, times: int) -> torch.Tensor:
    """keys [B K T d] (after RoPE) turned by ``times`` · t · θ more: the angle that many re-rotations add."""
    angles = torch.outer(torch.arange(keys.shape[2], device=keys.device).float() * times, model.rope.inv_freq)
    table = torch.cat([angles, angles], dim=-1)  # [T, d], Hugging Face layout
    return apply_rotary(keys.transpose(1, 2), table.cos(), table.sin()).transpose(1, 2)


probe_cache = KVCache.allocate(model, max_length=P)
with torch.no_grad():
    model(tokens, cache=probe_cache)
at_t = probe_cache.layer_keys(3).clone()  # key t at angle t·θ, as RoPE left it
rotate_cached_keys_again(probe_cache)
torch.testing.assert_close(probe_cache.layer_keys(3), rotated_by(at_t, 1), atol=1e-4, rtol=1e-4)  # 2t·θ
rotate_cached_keys_again(probe_cache)
torch.testing.assert_close(probe_cache.layer_keys(3), rotated_by(at_t, 2), atol=1e-4, rtol=1e-4)  # 3t·θ
assert not torch.allclose(probe_cache.layer_keys(3), rotated_by(at_t, 1), atol=1e-3)  # not 2t·θ any more
print("written back, re-rotations compound: 2t·θ after one, 3t·θ after two")



# %%
# NBVAL_CHECK_OUTPUT
correct = greedy_cached(tokens[0].tolist(), 16)
buggy = greedy_cached(tokens[0].tolist(), 16, before_each_step=rotate_cached_keys_again)
first = next(i for i, (a, b) in enumerate(zip(correct, buggy)) if a != b)
print("correct:", repr(tok.decode(correct[P:])))
print("re-rotated:", repr(tok.decode(buggy[P:])))
print(f"first different token: position {first} (generated token {first - P})")

# %% [markdown]
# The first token comes from the prefill, before any re-rotation. The damage starts at the first decode
# step, but the next couple of tokens are confident enough to survive it; then the model loses track of where
# it is and repeats itself. The first decode step's next-token distribution, correct against re-rotated:

# %%
kv_good = KVCache.allocate(model, max_length=16)
kv_bad = KVCache.allocate(model, max_length=16)
with torch.no_grad():
    model(tokens, cache=kv_good), model(tokens, cache=kv_bad)
    rotate_cached_keys_again(kv_bad)
    next_in = torch.tensor([[correct[P]]], device=model.device)
    good_probs = model(next_in, cache=kv_good)[0, -1].float().softmax(-1)
    bad_probs = model(next_in, cache=kv_bad)[0, -1].float().softmax(-1)
top = good_probs.topk(6).indices
print(f"position 0 keys unchanged by the bug: {torch.equal(kv_good.layer_keys(3)[:, :, 0], kv_bad.layer_keys(3)[:, :, 0])}")
viz.topk_bars(
    tok.token_strings(top.tolist()) + [s + " (bug)" for s in tok.token_strings(top.tolist())],
    torch.cat([good_probs[top], bad_probs[top]]),
    highlight=list(range(6, 12)),
    title="next token after ' Paris': correct vs keys rotated twice",
)

# %% [markdown]
# ## 6. Explore: generation with a growing cache
#
# `StepperView` is a `Session` (package `session.py`) drawn in the browser: each **Step** is one decode
# forward of one token against the cache; **Back** rewinds the cache by one position (`cache.truncate`),
# which is all it takes to "undo" a token, since nothing else depends on later positions (clicking a
# generated token rewinds to just before it the same way).

# %%
# NBVAL_IGNORE_OUTPUT
stepper = StepperView(model, prompt, temperature=0.0, layer=LAYER)
stepper

# %% [markdown]
# Its session's cache always holds every token but the last one (the last is fed at the next step). The
# check steps a second stepper, so the one shown above stays at the prompt:

# %%
# NBVAL_CHECK_OUTPUT
probe = StepperView(model, prompt, temperature=0.0, layer=LAYER)
probe.step(4)
print("text:", repr(probe.text), " tokens:", len(probe.tokens), " cache length:", probe.session.cache.length)
assert probe.session.cache.length == len(probe.tokens) - 1
probe.back()
print("after Back: tokens:", len(probe.tokens), " cache length:", probe.session.cache.length)
assert probe.tokens == sequence[: len(probe.tokens)]
assert stepper.tokens == stepper.session.prompt_tokens  # the stepper displayed above is unchanged

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `kv_cache_gib(config, context, batch, bytes_per_number)`: the KV cache in GiB for
# `batch` sequences of `context` tokens. The check compares with the package on Llama 3 8B with a batch of
# 8 sequences of 8,192 tokens in bf16.

# %%
# NBVAL_CHECK_OUTPUT
def kv_cache_gib(config: LlamaConfig, context: int, batch: int, bytes_per_number: int) -> float:
    raise NotImplementedError  # your code here


def package_gib(config, context, batch, bytes_per_number):
    return config.kv_cache_bytes(context, batch=batch, dtype="bf16") / 2**30


check_exercise(kv_cache_gib, package_gib, llama3_8b, 8192, 8, 2)

# %% solution
# Solution to exercise 1: kv_cache_gib
# NBVAL_CHECK_OUTPUT
def kv_cache_gib_solution(config: LlamaConfig, context: int, batch: int, bytes_per_number: int) -> float:
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * bytes_per_number
    return batch * context * per_token / 2**30


check_exercise(kv_cache_gib_solution, package_gib, llama3_8b, 8192, 8, 2)

# %% [markdown]
# **Exercise 2.** One decode step of attention by hand. Given the new token's rotated queries `[B, 1, H, d]`
# and a layer's cached keys and values `[B, K, T, d]` (the new token's already written), return the head
# outputs `z` `[B, 1, H, d]`. No mask is needed (why?). The check compares with the decode step's
# `hook_z` from the package.

# %%
decode_cache = cache.clone()
with torch.no_grad():
    _, step_run = model.run_with_cache(last_token, cache=decode_cache, names_filter=lambda n: n.endswith((f"{LAYER}.attn.hook_rot_q", f"{LAYER}.attn.hook_z")))
step_inputs = (step_run["rot_q", LAYER], decode_cache.layer_keys(LAYER), decode_cache.layer_values(LAYER))
show_shapes(rot_q=step_inputs[0], keys=step_inputs[1], values=step_inputs[2], z=step_run["z", LAYER])


def package_z(rot_q, keys, values):
    return step_run["z", LAYER]


# %%
# NBVAL_CHECK_OUTPUT
def decode_attention(rot_q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_exercise(decode_attention, package_z, *step_inputs)

# %% solution
# Solution to exercise 2: decode_attention
# NBVAL_CHECK_OUTPUT
def decode_attention_solution(rot_q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    # The one query is the newest position: every cached key is in its past, so nothing is masked.
    q = rearrange(rot_q, "b p (k g) d -> b k g p d", k=keys.shape[1])
    scores = einsum(q, keys, "b k g p d, b k t d -> b k g p t") / q.shape[-1] ** 0.5
    pattern = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    z = einsum(pattern, values, "b k g p t, b k t d -> b p k g d")
    return rearrange(z, "b p k g d -> b p (k g) d")


check_exercise(decode_attention_solution, package_z, *step_inputs, atol=1e-5, rtol=1e-4)

# %% [markdown]
# ## What to remember
# - Causal attention makes position `t`'s keys and values depend on tokens `≤ t` only, so they can be
#   computed once and kept: prefill the prompt in one forward, then one position per step.
# - `KVCache`: per layer `[B, K, T, d]` keys (after RoPE) and values, `length` filled; a decode step writes
#   one slot and attends over `layer_keys(l)`; rewinding is just lowering `length`.
# - Cached and uncached logits are the same numbers (up to float rounding): the cache is an optimisation,
#   never an approximation.
# - Memory per token: `2 · L · K · d · bytes`: 131,072 B for Llama 3 8B in bf16 (1 GiB per 8K-token
#   sequence); GQA divides it by `H/K` (4 for the 8B).
# - Cached keys are already rotated: rotating them again silently breaks every relative position but 0.
