# %% [markdown]
# # 00 · `config.json`, explained
#
# A Llama 3 checkpoint starts with a 25-line `config.json`. Every size in the model, every byte of memory it
# needs and half of the classic implementation bugs can be read off it, if you know what each field means.
#
# **You will learn:**
# - what every field of Llama 3 8B's `config.json` means, and which ones matter for the math;
# - how the odd MLP width **14336** comes out of Meta's `params.json` (`ffn_dim_multiplier = 1.3`);
# - to count the **8,030,261,248** parameters by hand, matrix by matrix, and check the count against real modules;
# - why the KV cache costs **131,072 bytes per token** and what grouped-query attention saves;
# - how memory grows with context length, and how to explore it with `ConfigExplorer`.
#
# **Runs on:** no model weights at all: only the configs (Llama 3 8B's `config.json` at the root of this
# repository, the embedded SmolLM2-135M-Instruct's GGUF header, and a tiny random Llama-3-shaped model to
# count real parameters). Runs the same on CPU with or without `LLAMA3_LAB_WEIGHTS`.

# %%
import json
from pathlib import Path

import torch

from llama3_lab import LlamaConfig, viz
from llama3_lab.config import meta_ffn_hidden_dim
from llama3_lab.notebook import check_exercise, fmt, setup_notebook

setup_notebook()

# %% [markdown]
# ## 1. The file
#
# This is the `config.json` Hugging Face publishes with `meta-llama/Meta-Llama-3-8B`. `LlamaConfig.from_json`
# parses it, validates it (e.g. that 32 query heads split evenly over 8 KV heads), and keeps the fields it does
# not model (`architectures`, `use_cache`, ...) in `extra`, so nothing is silently dropped.

# %%
# NBVAL_CHECK_OUTPUT
raw = json.loads(Path("../config.json").read_text())
cfg = LlamaConfig.from_json("../config.json")
print(len(raw), "fields:", ", ".join(sorted(raw)))

# %% [markdown]
# `explain()` gives one row per field (value and meaning), then the figures derived from them. In JupyterLab it
# renders as a table; the rest of this notebook re-derives the numbers in the second table by hand.

# %%
explanation = cfg.explain(title="Llama 3 8B config.json")
explanation

# %% [markdown]
# Every field of the file has an explanation (none falls back to the "not used by llama3-lab" text), and the
# values shown are the values in the file:

# %%
# NBVAL_CHECK_OUTPUT
assert set(raw) <= set(explanation.fields), set(raw) - set(explanation.fields)
for name, value in raw.items():
    row = explanation[name]
    assert row.explanation and "Not used by llama3-lab" not in row.explanation, name
    assert json.loads(row.value) == value, (name, row.value, value)
print("explained:", len(raw), "of", len(raw), "fields")
print("rms_norm_eps  ->", explanation["rms_norm_eps"].explanation[:60], "...")

# %% [markdown]
# ## 2. The shapes every other notebook uses
#
# The letters are TransformerLens's: **D** model width, **H** query heads, **K** key/value heads, **d** head
# width, **G** = H/K query heads per KV head, **M** MLP width, **V** vocabulary, **L** layers.
#
# `head_dim` is not in the file: it is D/H. The KV projections are narrower than the query projection because
# of grouped-query attention (GQA): 32 query heads share 8 key/value heads, 4 each.

# %%
# NBVAL_CHECK_OUTPUT
D, H, K, L = raw["hidden_size"], raw["num_attention_heads"], raw["num_key_value_heads"], raw["num_hidden_layers"]
M, V = raw["intermediate_size"], raw["vocab_size"]
d = D // H
G = H // K
print(f"D={D} H={H} K={K} d={d} G={G} M={M} V={V} L={L}")
print("q_proj weight:", [H * d, D], " k_proj/v_proj weight:", [K * d, D], " o_proj weight:", [D, H * d])
print("gate/up weight:", [M, D], " down weight:", [D, M], " embedding:", [V, D])
assert (d, G, K * d) == (cfg.head_dim, cfg.gqa_group, cfg.kv_width) == (128, 4, 1024)

# %% [markdown]
# ## 3. Where 14336 comes from
#
# Meta's own checkpoints ship a `params.json` instead: `dim 4096, multiple_of 1024, ffn_dim_multiplier 1.3`.
# The MLP width is computed from those in `FeedForward.__init__`: start from the classic 4·D, take 2/3 of it
# (SwiGLU has three matrices instead of two, so 2/3 keeps the parameter count of a 4·D two-matrix MLP), scale
# by the multiplier, and round **up** to a multiple of `multiple_of` (hardware-friendly shapes).

# %%
# NBVAL_CHECK_OUTPUT
dim, multiple_of, ffn_dim_multiplier = 4096, 1024, 1.3
hidden = 4 * dim
print("4·dim                 =", hidden)
hidden = int(2 * hidden / 3)
print("⌊2/3 of that⌋         =", hidden)
hidden = int(ffn_dim_multiplier * hidden)
print("⌊× 1.3⌋               =", hidden)
hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
print("round up to ×1024     =", hidden)
assert hidden == meta_ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier) == cfg.intermediate_size == 14336

# %% [markdown]
# ## 4. Counting 8,030,261,248 parameters
#
# A Llama block has no biases. Its matrices: `q_proj` [H·d, D], `k_proj` and `v_proj` [K·d, D], `o_proj`
# [D, H·d]; the SwiGLU MLP's `gate_proj`, `up_proj` [M, D] and `down_proj` [D, M]; two RMSNorm gains of D each.
# Outside the blocks: the embedding [V, D], a final norm D, and the unembedding (`lm_head`) [V, D], which
# Llama 3 8B does **not** tie to the embedding (`tie_word_embeddings: false`).

# %%
# NBVAL_CHECK_OUTPUT
attention = D * (H * d) + 2 * D * (K * d) + (H * d) * D
mlp = 3 * D * M
norms = 2 * D
per_layer = attention + mlp + norms
embedding = unembedding = V * D
total = embedding + L * per_layer + D + unembedding
print(f"attention per layer {attention:>15,}")
print(f"MLP per layer       {mlp:>15,}")
print(f"norms per layer     {norms:>15,}")
print(f"one block           {per_layer:>15,}")
print(f"embedding           {embedding:>15,}   (and the same again for the untied unembedding)")
print(f"total               {total:>15,}")
print(f"bf16 weights        {2 * total / 1e9:.2f} GB = {2 * total / 2**30:.2f} GiB")
assert total == cfg.num_parameters() == 8_030_261_248
assert cfg.parameter_breakdown()["per_layer"] == per_layer

# %% [markdown]
# Where do the parameters go? The shares of the whole model, from the counts above:

# %%
# NBVAL_CHECK_OUTPUT
shares = {"MLP": L * mlp / total, "attention": L * attention / total, "embedding + unembedding": 2 * V * D / total}
for part, share in shares.items():
    print(f"{part:24} {share:6.1%}")
assert 2 / 3 < shares["MLP"] < 0.75 and shares["attention"] < 1 / 5 and 0.12 < shares["embedding + unembedding"] < 0.14

# %% [markdown]
# The MLP holds 70% of the model (a little more than two thirds); attention with GQA less than a fifth; the
# vocabulary 13%. The figure shows the same split:

# %%
viz.config_breakdown(cfg, title="Llama 3 8B")

# %% [markdown]
# ### Check the formula against real modules
#
# A formula is only as good as its match with the code. Build the package's own `LlamaModel` with the same
# widths but 2 layers and a small vocabulary (random weights: randomness is fine for counting), then count
# its parameters with `numel`.

# %%
# NBVAL_CHECK_OUTPUT
from llama3_lab.model import LlamaModel

small = cfg.replace(num_hidden_layers=2, vocab_size=1000, bos_token_id=0, eos_token_id=1)
with torch.device("meta"):  # shapes only: no memory allocated for the 2 × 218M weights
    model = LlamaModel(small)
counted = sum(p.numel() for p in model.parameters())
print(f"LlamaModel parameters: {counted:,}  formula: {small.num_parameters():,}")
assert counted == small.num_parameters() == 1000 * D * 2 + 2 * per_layer + D

# %% [markdown]
# ### Common mistake: the FFN width and the tied head
# Two wrong counts you will meet in blog posts: using the classic 4·D MLP width, and forgetting that the 8B
# unembedding is a separate matrix.

# %%
# NBVAL_CHECK_OUTPUT
wrong_ffn = cfg.replace(intermediate_size=4 * D).num_parameters()
wrong_tied = cfg.replace(tie_word_embeddings=True).num_parameters()
print(f"MLP width 4·D = 16384      -> {wrong_ffn:,} ({(wrong_ffn - total) / 1e6:+,.0f} M)")
print(f"embedding tied to lm_head  -> {wrong_tied:,} ({(wrong_tied - total) / 1e6:+,.0f} M)")
torch.testing.assert_close(torch.tensor(total - wrong_tied), torch.tensor(V * D))

# %% [markdown]
# ## 5. The KV cache: 131,072 bytes per token
#
# When generating, each layer keeps the keys and values of every past token so it does not recompute them
# (notebook 09). Per token and layer that is one K vector and one V vector for each of the **K = 8** KV heads,
# d = 128 numbers each, 2 bytes each in bf16. Without GQA there would be one per *query* head.

# %%
# NBVAL_CHECK_OUTPUT
bytes_per_value = 2  # bf16
kv_per_token = 2 * L * K * d * bytes_per_value  # (K and V) · layers · KV heads · head dim · bytes
kv_per_token_without_gqa = 2 * L * H * d * bytes_per_value
print(f"KV cache per token:           {kv_per_token:,} B")
print(f"at 8192 tokens:               {kv_per_token * 8192 / 2**30:.2f} GiB")
print(f"without GQA (K = H = 32):     {kv_per_token_without_gqa:,} B per token, "
      f"{kv_per_token_without_gqa * 8192 / 2**30:.2f} GiB at 8192, {kv_per_token_without_gqa // kv_per_token}× as much")
assert kv_per_token_without_gqa == (H // K) * kv_per_token
assert kv_per_token == cfg.kv_cache_bytes_per_token("bf16") == 131_072
assert cfg.kv_cache_bytes(8192, batch=1, dtype="bf16") == 2**30

# %% [markdown]
# ## 6. Memory against context length
#
# Weights are paid once; the KV cache grows linearly with context and batch. Llama 3.1 8B has the same matrices
# with a 131,072-token context (and RoPE scaling, notebook 03): at full context the KV cache of one sequence
# is as large as the weights. The second panel shows where the lines cross.

# %%
cfg31 = cfg.replace(
    max_position_embeddings=131072,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
)
viz.config_breakdown(cfg31, title="Llama 3.1 8B (131,072-token context)")

# %% [markdown]
# ## 7. The embedded model: SmolLM2-135M-Instruct
#
# The notebooks that run a model use SmolLM2-135M-Instruct by default, a trained model with exactly the Llama
# architecture. Its config comes from the GGUF file's header. It *ties* its embeddings (no separate `lm_head`),
# has 9 query heads over 3 KV heads (G = 3) and d = 64.

# %%
# NBVAL_CHECK_OUTPUT
from llama3_lab.assets import asset_path

smol = LlamaConfig.from_gguf(asset_path("smollm2-135m-instruct.gguf"))
print(f"D={smol.hidden_size} H={smol.num_attention_heads} K={smol.num_key_value_heads} d={smol.head_dim} "
      f"M={smol.intermediate_size} V={smol.vocab_size} L={smol.num_hidden_layers} "
      f"tied={smol.tie_word_embeddings} theta={smol.rope_theta:g} eps={smol.rms_norm_eps:g}")
print(f"parameters {smol.num_parameters():,}, KV cache {smol.kv_cache_bytes_per_token('float32'):,} B/token in float32")
assert smol.num_parameters() == 134_515_008

# %% [markdown]
# ## 8. Explore: `ConfigExplorer`
#
# Pick a model (the published Llama 3, 3.1 and 3.2 sizes from 1B to 405B, and SmolLM2-135M), slide the
# sequence length and batch, switch the dtype: the table and figure show parameters, weights, KV cache, attention-pattern and activation-cache memory, all computed by
# `LlamaConfig`. (Without a live kernel you see a static image of its state.)

# %%
# NBVAL_IGNORE_OUTPUT
from llama3_lab.widgets import ConfigExplorer

explorer = ConfigExplorer(model="Llama 3 8B", seq_len=8192, batch=1, dtype="bf16")
explorer

# %% [markdown]
# The widget's state is plain Python, so it can be checked like any object: moving the sliders changes the
# numbers exactly as the formulas above say. The check drives a second explorer, so the one shown above
# keeps the state you see (8192 tokens, batch 1, bf16).

# %%
# NBVAL_CHECK_OUTPUT
assert explorer.model.options == ("Llama 3 8B", "Llama 3 70B", "Llama 3.1 8B", "Llama 3.1 70B", "Llama 3.1 405B",
                                  "Llama 3.2 1B", "Llama 3.2 3B", "SmolLM2-135M")
assert explorer.numbers["parameters"] == total
assert explorer.numbers["kv_cache_bytes"] == 8192 * kv_per_token
probe = ConfigExplorer(model="Llama 3 8B", seq_len=8192, batch=1, dtype="bf16")
probe.batch.value = 4
probe.seq_len.value = 1024
assert probe.numbers["kv_cache_bytes"] == 4 * 1024 * kv_per_token
probe.dtype.value = "fp32"
assert probe.numbers["weights_bytes"] == 4 * total
assert explorer.numbers["kv_cache_bytes"] == 8192 * kv_per_token  # the displayed explorer is unchanged
print("KV cache at T=1024, batch 4, fp32:", f"{probe.numbers['kv_cache_bytes']:,} B")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `kv_cache_bytes(cfg, seq_len, batch)` for a bf16 cache using only the config's fields.
# The check compares it with the package on Llama 3 8B and on SmolLM2.

# %%
# NBVAL_CHECK_OUTPUT
def kv_cache_bytes(cfg: LlamaConfig, seq_len: int, batch: int) -> int:
    raise NotImplementedError  # your code here


def reference_kv(cfg, seq_len, batch):
    return cfg.kv_cache_bytes(seq_len, batch, "bf16")


check_exercise(kv_cache_bytes, reference_kv, cfg, 8192, 1)
check_exercise(kv_cache_bytes, reference_kv, smol, 300, 3)

# %% solution
# Solution to exercise 1: kv_cache_bytes
# NBVAL_CHECK_OUTPUT
def kv_cache_bytes_solution(cfg: LlamaConfig, seq_len: int, batch: int) -> int:
    head_dim = cfg.hidden_size // cfg.num_attention_heads if cfg.head_dim is None else cfg.head_dim
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2 * seq_len * batch


check_exercise(kv_cache_bytes_solution, reference_kv, cfg, 8192, 1)
check_exercise(kv_cache_bytes_solution, reference_kv, smol, 300, 3)

# %% [markdown]
# **Exercise 2.** Count the parameters of Llama 3.2 1B from its config: D 2048, 16 layers, 32 query heads,
# 8 KV heads, d 64, M 8192, vocabulary 128,256, and **tied** embeddings. Write the general
# `count_parameters(cfg)` (mind the tie).

# %%
# NBVAL_CHECK_OUTPUT
llama32_1b = cfg.replace(hidden_size=2048, num_hidden_layers=16, head_dim=64, intermediate_size=8192,
                         tie_word_embeddings=True)


def count_parameters(cfg: LlamaConfig) -> int:
    raise NotImplementedError  # your code here


check_exercise(count_parameters, LlamaConfig.num_parameters, llama32_1b)

# %% solution
# Solution to exercise 2: count_parameters
# NBVAL_CHECK_OUTPUT
def count_parameters_solution(cfg: LlamaConfig) -> int:
    D, M, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    q_width, kv_width = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = 2 * D * q_width + 2 * D * kv_width + 3 * D * M + 2 * D
    unembedding = 0 if cfg.tie_word_embeddings else V * D
    return V * D + L * per_layer + D + unembedding


check_exercise(count_parameters_solution, LlamaConfig.num_parameters, llama32_1b)
print(f"Llama 3.2 1B: {count_parameters_solution(llama32_1b):,} parameters")

# %% [markdown]
# ## What to remember
# - `head_dim` = D/H; GQA makes `k_proj`/`v_proj` G times narrower than `q_proj` and the KV cache G times smaller.
# - 14336 = round-up-to-1024(⌊1.3 · ⌊2/3 · 4 · 4096⌋⌋); the MLP holds 70% of the 8B parameters.
# - 8,030,261,248 parameters = 16.06 GB in bf16; the untied `lm_head` is 525 M of them.
# - KV cache: 2 · L · K · d · bytes = 131,072 B per token in bf16, 1 GiB at 8192 tokens.
# - `rms_norm_eps` is 1e-5: a norm built with a library default of 1e-6 runs without error and is subtly wrong
#   (notebook 02).
