# %% [markdown]
# # 11 · Weights and verification
#
# The same Llama 3 weights are published in three layouts: Meta's original `consolidated.NN.pth` shards,
# Hugging Face's `model.safetensors`, and llama.cpp's GGUF. They differ in names, in how tensors are split
# across files, and, the part that bites, in the **order of the rows of `wq` and `wk`**, because the two
# code bases pair up RoPE dimensions differently. A loader that gets this wrong produces a model that runs,
# prints plausible shapes, and is silently wrong from the second token on.
#
# **You will learn:**
# - why the q/k rows are permuted between Meta (and GGUF) and Hugging Face, shown on the math: the same
#   attention scores from Meta rows with complex-number RoPE and from Hugging Face rows with `rotate_half`;
# - what a Meta checkpoint is on disk: we write one (two tensor-parallel shards, `params.json`) from a tiny
#   random model, load it with `load_model`, and get exactly the logits of its Hugging Face twin;
# - GGUF's rows on the real SmolLM2 file, checked against the loaded model;
# - how to verify a model: logits against `transformers.LlamaForCausalLM` built from the same weights;
# - what the wrong layout does: attention scores equal at distance 0 and different from distance 1, so the
#   logits agree at position 0 and diverge from position 1 (the first divergent position).
#
# **Runs on:** a tiny random Llama-3-shaped model (2 layers, 4 query heads, 2 KV heads, head dim 16:
# randomness is fine, we compare layouts, not answers) and the embedded SmolLM2-135M-Instruct on CPU,
# float32, with its GGUF file. `LLAMA3_LAB_WEIGHTS` is not used: every check here needs the same model
# in two layouts, which the small models give in seconds.

# %%
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from gguf.quants import dequantize

from llama3_lab import LlamaConfig, LlamaModel, load_model, viz
from llama3_lab.assets import asset_path
from llama3_lab.config import meta_ffn_hidden_dim
from llama3_lab.loading import converted_model_dir, layouts
from llama3_lab.loading.gguf import open_gguf
from llama3_lab.loading.hf import hf_name
from llama3_lab.model import apply_rotary, apply_rotary_complex, rope_inv_freq
from llama3_lab.notebook import check_exercise, fmt, setup_notebook, show_shapes

setup_notebook()
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
workdir = Path(tempfile.mkdtemp(prefix="llama3-lab-nb11-"))

# %% [markdown]
# ## 1. Why the q/k rows are permuted
#
# RoPE rotates pairs of dimensions of each query and key head by an angle proportional to the position.
# Which dimensions form a pair is a convention:
# - **Meta** (and GGUF): adjacent dims `(2i, 2i+1)`, rotated as the complex number `q_{2i} + i·q_{2i+1}`;
# - **Hugging Face**: dim `i` with dim `i + d/2` (`rotate_half`).
#
# The same model can be written either way if the rows of `wq` and `wk` are reordered within each head:
# Meta row `2i + j` (pair `i`, member `j`) becomes Hugging Face row `j·d/2 + i`: all even rows first, then
# all odd rows. On one head's row indices (`d = 16`):

# %%
# NBVAL_CHECK_OUTPUT
d = 16
rows = torch.arange(d)[:, None].float()  # a [d, 1] "weight" whose entries are its row numbers
hf_order = layouts.meta_to_hf_qk(rows, n_heads=1)[:, 0].long()
ours = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # even rows, then odd rows
assert torch.equal(hf_order, ours)
print("Hugging Face row r holds Meta row:", hf_order.tolist())
print("and back:", layouts.hf_to_meta_qk(hf_order[:, None].float(), n_heads=1)[:, 0].long().tolist())

# %% [markdown]
# The permutation is applied per head (rows of head `h` stay in head `h`), to `wq` with `H` heads and to
# `wk` with `K` heads; `wv`, `wo` and the MLP are untouched. GGUF uses Meta's order (llama.cpp's converter
# applies Meta's interleaving to Hugging Face checkpoints), so `gguf_to_hf_qk` is the same permutation.
# Check all of that on a random `wk` of 2 KV heads:

# %%
# NBVAL_CHECK_OUTPUT
K, D = 2, 64
w_meta = torch.randn(K * d, D)
w_hf = layouts.meta_to_hf_qk(w_meta, K)
for h in range(K):
    torch.testing.assert_close(w_hf[h * d : (h + 1) * d], w_meta[h * d : (h + 1) * d][ours])
torch.testing.assert_close(layouts.hf_to_meta_qk(w_hf, K), w_meta)
torch.testing.assert_close(layouts.gguf_to_hf_qk(w_meta, K), w_hf)
torch.testing.assert_close(layouts.hf_to_gguf_qk(w_hf, K), w_meta)
show_shapes(w_meta=w_meta, w_hf=w_hf)
print("per head: even rows then odd rows; inverse and GGUF versions agree")

# %% [markdown]
# Now the point of it: Meta rows with Meta's complex RoPE give the **same attention scores** as Hugging Face
# rows with `rotate_half`. Project one random input through both layouts, rotate each its own way, and
# compare every query-key dot product over 10 positions.

# %%
# NBVAL_CHECK_OUTPUT
P, H = 10, 4
cfg_rope = LlamaConfig(hidden_size=H * d, num_attention_heads=H, num_key_value_heads=H, intermediate_size=128,
                       num_hidden_layers=1, vocab_size=256, bos_token_id=None, eos_token_id=None)
inv_freq = rope_inv_freq(cfg_rope)  # [d/2], theta 500,000
x = torch.randn(1, P, H * d)
wq_meta, wk_meta = torch.randn(H * d, H * d) / (H * d) ** 0.5, torch.randn(H * d, H * d) / (H * d) ** 0.5
wq_hf, wk_hf = layouts.meta_to_hf_qk(wq_meta, H), layouts.meta_to_hf_qk(wk_meta, H)

positions = torch.arange(P)
angles = torch.outer(positions.float(), inv_freq)
cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()  # [P d]


def heads(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, P, H, d)  # b p (h d) -> b p h d


q_meta = apply_rotary_complex(heads(x @ wq_meta.T), positions, inv_freq)
k_meta = apply_rotary_complex(heads(x @ wk_meta.T), positions, inv_freq)
q_hf, k_hf = apply_rotary(heads(x @ wq_hf.T), cos, sin), apply_rotary(heads(x @ wk_hf.T), cos, sin)
scores_meta = torch.einsum("bphd,bthd->bhpt", q_meta, k_meta)
scores_hf = torch.einsum("bphd,bthd->bhpt", q_hf, k_hf)
torch.testing.assert_close(scores_hf, scores_meta, atol=1e-4, rtol=1e-4)
show_shapes(q_meta=q_meta, q_hf=q_hf, scores=scores_hf)
print("same scores for all", H * P * P, "query-key pairs")

# %% [markdown]
# The rotated vectors themselves differ (their entries are in different orders); only the dot products,
# which is all attention uses, agree.
#
# ## 2. A Meta checkpoint on disk, and loading it
#
# A tiny random Llama-3-shaped model stands in for the 8B (same code paths and vocabulary, 2 layers of
# width 64: seconds instead of minutes).
# Its MLP width follows Meta's formula from `dim` and `multiple_of` (`meta_ffn_hidden_dim`, notebook 00),
# because `params.json` stores those and not the width.

# %%
# NBVAL_CHECK_OUTPUT
dim, multiple_of = 64, 32
tiny_cfg = LlamaConfig(
    hidden_size=dim, intermediate_size=meta_ffn_hidden_dim(dim, multiple_of), num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1,
)  # Llama 3's vocabulary (128,256), token ids and rope_theta (500,000): the defaults of LlamaConfig
tiny = LlamaModel.from_config(tiny_cfg, seed=0, device="cpu", dtype=torch.float32)
print(f"{sum(p.numel() for p in tiny.parameters()):,} parameters; MLP width {tiny_cfg.intermediate_size}, head dim {tiny_cfg.head_dim}")

# %% [markdown]
# **Hugging Face layout**: `config.json` + `model.safetensors`, names like
# `model.layers.0.self_attn.q_proj.weight`, q/k rows already in `rotate_half` order.

# %%
# NBVAL_CHECK_OUTPUT
hf_dir = workdir / "hf"
tiny.save_pretrained(hf_dir)
print(sorted(p.name for p in hf_dir.iterdir()))

# %% [markdown]
# **Meta layout**: Meta trained and released with tensor parallelism, so a checkpoint is one file per GPU
# (`consolidated.00.pth`, `.01.pth`, ...; 8B has one, 70B eight). Each shard holds a slice of every matrix:
# - column-parallel matrices (`wq`, `wk`, `wv`, `w1` = gate, `w3` = up, `output`, and Llama 3's
#   `tok_embeddings`) are split along their **output rows** (dim 0);
# - row-parallel ones (`wo`, `w2` = down) along their **input columns** (dim 1);
# - norms are replicated.
#
# We write one by hand from the tiny model: rename, put q/k rows in Meta's order, split in two.

# %%
# NBVAL_CHECK_OUTPUT
N_SHARDS = 2
meta_dir = workdir / "meta"
meta_dir.mkdir()
meta_names = {  # ours -> (Meta's name, split axis; None = replicated)
    "embed.weight": ("tok_embeddings.weight", 0),
    "ln_final.weight": ("norm.weight", None),
    "unembed.weight": ("output.weight", 0),
}
for layer in range(tiny_cfg.num_hidden_layers):
    for ours_name, (theirs, axis) in {
        "ln1.weight": ("attention_norm.weight", None), "attn.q_proj.weight": ("attention.wq.weight", 0),
        "attn.k_proj.weight": ("attention.wk.weight", 0), "attn.v_proj.weight": ("attention.wv.weight", 0),
        "attn.o_proj.weight": ("attention.wo.weight", 1), "ln2.weight": ("ffn_norm.weight", None),
        "mlp.gate_proj.weight": ("feed_forward.w1.weight", 0), "mlp.up_proj.weight": ("feed_forward.w3.weight", 0),
        "mlp.down_proj.weight": ("feed_forward.w2.weight", 1),
    }.items():
        meta_names[f"blocks.{layer}.{ours_name}"] = (f"layers.{layer}.{theirs}", axis)

shards = [{} for _ in range(N_SHARDS)]
for name, param in tiny.named_parameters():
    meta_name, axis = meta_names[name]
    weight = param.detach()
    if name.endswith("q_proj.weight"):
        weight = layouts.hf_to_meta_qk(weight, tiny_cfg.num_attention_heads)
    elif name.endswith("k_proj.weight"):
        weight = layouts.hf_to_meta_qk(weight, tiny_cfg.num_key_value_heads)
    pieces = [weight] * N_SHARDS if axis is None else weight.chunk(N_SHARDS, dim=axis)
    for shard, piece in zip(shards, pieces):
        shard[meta_name] = piece.clone()
for i, shard in enumerate(shards):
    torch.save(shard, meta_dir / f"consolidated.{i:02d}.pth")
params = {"dim": dim, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": tiny_cfg.vocab_size, "multiple_of": multiple_of,
          "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 500000.0, "max_seq_len": 128}
(meta_dir / "params.json").write_text(json.dumps(params))
print(sorted(p.name for p in meta_dir.iterdir()))
for key in ("layers.0.attention.wq.weight", "layers.0.attention.wo.weight", "layers.0.attention_norm.weight"):
    print(f"  {key}: full {list(tiny.get_parameter([k for k, v in meta_names.items() if v[0] == key][0]).shape)}, shard 0 {list(shards[0][key].shape)}")

# %% [markdown]
# `load_model` recognises each layout by its files (`params.json` + shards, or `config.json` +
# safetensors), concatenates the shards along the right axis and converts Meta's q/k rows to Hugging Face's.
# Both twins must give the same logits on the same tokens. (The folders hold no `tokenizer.model`; the
# loader's note about that is silenced.)

# %%
# NBVAL_CHECK_OUTPUT
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from_meta = load_model(meta_dir, device="cpu", dtype=torch.float32, progress=False)
    from_hf = load_model(hf_dir, device="cpu", dtype=torch.float32, progress=False)
architecture = lambda c: c.replace(extra={}, torch_dtype=None, initializer_range=0.02)  # noqa: E731
# (ignoring file metadata and the init scale, which params.json does not record)
assert architecture(from_meta.cfg) == architecture(from_hf.cfg) == architecture(tiny_cfg)
tokens = torch.randint(0, tiny_cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits_meta, logits_hf, logits_tiny = from_meta(tokens), from_hf(tokens), tiny(tokens)
torch.testing.assert_close(logits_meta, logits_hf)
torch.testing.assert_close(logits_hf, logits_tiny)
for name, param in from_hf.named_parameters():
    assert torch.equal(param, from_meta.get_parameter(name)), name
show_shapes(tokens=tokens, logits_meta=logits_meta, logits_hf=logits_hf)
print("Meta shards and Hugging Face safetensors load to identical parameters and logits")

# %% [markdown]
# ## 3. GGUF: the real SmolLM2 file
#
# llama.cpp's GGUF stores each tensor with its shape innermost-first (`[in, out]`), often quantised (this
# file: Q4_1 blocks for most matrices, Q8_0 for the embedding), under names like `blk.0.attn_q.weight`, with
# q/k rows in Meta's order. The embedded model was converted from exactly this file, so dequantising
# `blk.0.attn_q` and un-permuting it must give the loaded `q_proj` bit for bit.

# %%
# SmolLM2 whatever LLAMA3_LAB_WEIGHTS says: the GGUF file and the converted directory below are its own.
model = load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32, progress=False)
tok, cfg = model.tokenizer, model.cfg

# %%
# NBVAL_CHECK_OUTPUT
reader = open_gguf(asset_path("smollm2-135m-instruct.gguf"))
by_name = {t.name: t for t in reader.tensors}
for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_norm.weight"):
    t = by_name[name]
    print(f"{name:24} {t.tensor_type.name:5} GGUF shape {list(map(int, t.shape))}")
raw_q = torch.from_numpy(dequantize(by_name["blk.0.attn_q.weight"].data, by_name["blk.0.attn_q.weight"].tensor_type).copy())
raw_k = torch.from_numpy(dequantize(by_name["blk.0.attn_k.weight"].data, by_name["blk.0.attn_k.weight"].tensor_type).copy())
show_shapes(raw_q=raw_q, raw_k=raw_k)

# %%
q_proj, k_proj = model.blocks[0].attn.q_proj.weight.cpu().float(), model.blocks[0].attn.k_proj.weight.cpu().float()
assert torch.equal(layouts.gguf_to_hf_qk(raw_q, cfg.num_attention_heads), q_proj)
assert torch.equal(layouts.gguf_to_hf_qk(raw_k, cfg.num_key_value_heads), k_proj)
assert not torch.equal(raw_q, q_proj)  # the raw rows are in the other order
print("GGUF rows un-permuted = the loaded q_proj and k_proj, exactly")

# %% [markdown]
# That check runs through the package's own `gguf_to_hf_qk`, so it cannot catch a mistake in that
# permutation. The independent reference is `transformers`' own GGUF loader
# (`transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint`, its progress bar switched off): it reads
# the same file with its own tensor names and its own reverse permutation of q/k. Every tensor it produces
# must equal the loaded model's parameter of the same Hugging Face name, bit for bit.

# %%
# NBVAL_CHECK_OUTPUT
from functools import partial
from unittest import mock

from tqdm.auto import tqdm
from transformers import modeling_gguf_pytorch_utils as transformers_gguf  # the independent reference

gguf_file = str(asset_path("smollm2-135m-instruct.gguf"))
hf_config = transformers.LlamaConfig(**transformers_gguf.load_gguf_checkpoint(gguf_file)["config"])
with torch.device("meta"):  # only its parameter names: no memory allocated
    names_only = transformers.LlamaForCausalLM(hf_config)
with mock.patch.object(transformers_gguf, "tqdm", partial(tqdm, disable=True)):  # no progress bar
    theirs = transformers_gguf.load_gguf_checkpoint(gguf_file, return_tensors=True, model_to_load=names_only)["tensors"]
ours = {hf_name(name): param.detach().cpu().float() for name, param in model.named_parameters()}
assert theirs.keys() == ours.keys()
different = [name for name in ours if not torch.equal(torch.as_tensor(theirs[name]).float(), ours[name])]
assert not different, different
print(f"transformers' GGUF loader: {len(theirs)} tensors, all equal to ours bit for bit "
      "(q_proj and k_proj included)")


# %% [markdown]
# ## 4. Verifying against `transformers`
#
# The strongest check of a reimplementation is an independent one: Hugging Face's `LlamaForCausalLM`,
# the reference most of the ecosystem trusts, loaded from the same weights, on the same tokens. First the
# tiny model (the Hugging Face twin saved above), then the embedded SmolLM2 (its converted Hugging Face
# directory in the cache). Both directories were written by this package, so these checks test the forward
# pass, not the weight layout: the layout was checked independently above, by transformers' own GGUF
# loader.

# %%
# NBVAL_CHECK_OUTPUT
reference_tiny = transformers.LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
with torch.no_grad():
    torch.testing.assert_close(logits_meta, reference_tiny(tokens).logits, atol=1e-5, rtol=1e-4)
print("tiny model: logits equal to transformers")

# %%
# NBVAL_CHECK_OUTPUT
prompt = "The capital of France is Paris. The capital of Italy is"
ids = model.to_tokens(prompt)
reference = transformers.LlamaForCausalLM.from_pretrained(converted_model_dir("smollm2-135m-instruct"), dtype=torch.float32, attn_implementation="eager").eval()
with torch.no_grad():
    ours_logits = model(ids).float().cpu()
    reference_logits = reference(ids.cpu()).logits
torch.testing.assert_close(ours_logits, reference_logits, atol=1e-4, rtol=1e-4)
gap = (ours_logits - reference_logits).abs().amax(-1)[0]  # [P]: the worst logit per position
show_shapes(ids=ids, ours=ours_logits, reference=reference_logits)
print("same top token at every position:", torch.equal(ours_logits.argmax(-1), reference_logits.argmax(-1)))
print("next token:", repr(tok.decode([int(ours_logits[0, -1].argmax())])))
print("largest |logit difference| below 1e-4:", bool(gap.max() < 1e-4))
assert gap.max() < 1e-4 and torch.equal(ours_logits.argmax(-1), reference_logits.argmax(-1))

# %% [markdown]
# The remaining differences are float32 rounding (different but equivalent orders of the same sums):
# below 1e-4 (asserted above) on logits whose largest is printed here, per position:

# %%
labels = tok.token_strings(ids[0].tolist())
size = ours_logits.abs().amax(-1)[0]  # [P]
print(f"largest |logit| per position: {size.min():.0f} .. {size.max():.0f}; "
      f"largest relative difference {(gap / size).max():.0e}")
assert size.min() > 10 and (gap / size).max() < 1e-5
viz.token_strip(labels, gap, label="max |Δ logit| vs transformers", chars_per_row=60, title="float32 rounding only")

# %% [markdown]
# ## 5. The wrong layout: the first divergent position
#
# Now the classic bug: load GGUF (or Meta) q/k rows into a `rotate_half` model **without** un-permuting
# them. Simulate it on SmolLM2 by putting its q/k rows back into GGUF order (`hf_to_gguf_qk`) in every
# layer, run, and restore.
#
# What should happen? Within a head the permuted rows are the same numbers in another order, so a dot
# product of a query and a key *rotated by the same angle* is unchanged (a rotation preserves dot
# products). That is exactly distance 0: a query with the key at its own position. At any other distance
# the pairs are rotated wrongly and the scores change. Position 0 only ever attends to itself, so its
# whole forward is unchanged and its logits are right; from position 1 on, everything is off.

# %%
def with_wrong_layout(run):
    """Run ``run()`` with every layer's q/k rows in GGUF/Meta order, as a loader that forgot the permutation."""
    originals = []
    with torch.no_grad():
        for block in model.blocks:
            q, k = block.attn.q_proj.weight, block.attn.k_proj.weight
            originals.append((q.clone(), k.clone()))
            q.copy_(layouts.hf_to_gguf_qk(q, cfg.num_attention_heads))
            k.copy_(layouts.hf_to_gguf_qk(k, cfg.num_key_value_heads))
    try:
        with torch.no_grad():
            return run()
    finally:
        with torch.no_grad():
            for block, (q, k) in zip(model.blocks, originals):
                block.attn.q_proj.weight.copy_(q)
                block.attn.k_proj.weight.copy_(k)


LAYER = 0
scores_name = f"blocks.{LAYER}.attn.hook_attn_scores"
with torch.no_grad():
    _, right = model.run_with_cache(ids, names_filter=scores_name)
wrong_logits, wrong = with_wrong_layout(lambda: model.run_with_cache(ids, names_filter=scores_name))
with torch.no_grad():
    torch.testing.assert_close(model(ids).float().cpu(), ours_logits)  # the weights are restored

# %% [markdown]
# Layer 0's scores (its input, the embeddings, is the same in both runs), compared by distance `query −
# key`:

# %%
# NBVAL_CHECK_OUTPUT
delta = (wrong[scores_name] - right[scores_name]).float()[0]  # [H, P, P]
n = ids.shape[1]
by_distance = [delta.diagonal(offset=-dist, dim1=-2, dim2=-1).abs().max().item() for dist in range(n)]
print("max |Δ score| at distance 0:", fmt(by_distance[0], 4))
print("max |Δ score| at distances 1-5:", fmt(by_distance[1:6], 2))
assert by_distance[0] < 1e-4 and min(by_distance[1:]) > 1e-2

# %%
viz.attention_pattern(
    delta.abs().amax(0), labels, title="layer 0: max over heads of |Δ score|, wrong vs right layout",
    figsize=(6.0, 5.0),
)

# %% [markdown]
# The diagonal (distance 0) is exactly zero; everything below it differs. Through the whole model, the
# logits, position by position:

# %%
# NBVAL_CHECK_OUTPUT
logit_gap = (wrong_logits.float().cpu() - ours_logits).abs().amax(-1)[0]  # [P]
first_divergent = int((logit_gap > 1e-3).nonzero()[0])
print("max |Δ logit| per position:", fmt(logit_gap[:6], 2), "...")
print("first divergent position:", first_divergent, repr(labels[first_divergent]))
print("wrong layout's next token:", repr(tok.decode([int(wrong_logits[0, -1].argmax())])), " right:", repr(tok.decode([int(ours_logits[0, -1].argmax())])))
assert first_divergent == 1 and logit_gap[0] < 1e-3 and logit_gap[1:].min() > 1
same_top = wrong_logits.float().cpu().argmax(-1)[0] == ours_logits.argmax(-1)[0]  # [P]
answer = int(ours_logits[0, -1].argmax())
p_answer = ours_logits[0, -1].softmax(-1)[answer].item(), wrong_logits.float().cpu()[0, -1].softmax(-1)[answer].item()
print(f"same top token at {int(same_top.sum())} of {n} positions; p({tok.decode([answer])!r} next): "
      f"{p_answer[0]:.2f} right, {p_answer[1]:.2f} wrong")
assert int(same_top.sum()) > n // 2 and same_top[-1] and p_answer[1] < p_answer[0]

# %%
viz.token_strip(labels, logit_gap, label="max |Δ logit|", chars_per_row=60,
                title="wrong q/k layout: right at position 0, wrong from position 1")

# %% [markdown]
# Position 0 is right (here the word `The`: SmolLM2's texts start without BOS) and every later position is
# wrong by more than a logit. Yet the top token is still the right one at most positions (the count above),
# the last included, only with a lower probability: on this prompt the wrong model is a worse model, not an
# obviously broken one. This is why a model
# check must compare **full logits at several positions**: a one-token test (or a check of the first
# position only) passes with the wrong layout, and so does a check of the top tokens alone. Comparing full
# logits with `transformers`, as in section 4, catches it at once.
#
# ## Exercises
#
# **Exercise 1.** Write `meta_to_hf(w, n_heads)`: reorder the rows of a Meta-layout `wq` or `wk` `[n_heads·d,
# D]` into Hugging Face's layout (within each head: even rows, then odd rows). The check compares with
# `layouts.meta_to_hf_qk` on SmolLM2-sized `wq` (9 heads of 64).

# %%
# NBVAL_CHECK_OUTPUT
def meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_exercise(meta_to_hf, layouts.meta_to_hf_qk, raw_q, 9)

# %% solution
# Solution to exercise 1: meta_to_hf
# NBVAL_CHECK_OUTPUT
def meta_to_hf_solution(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    head_dim = w.shape[0] // n_heads
    per_head = w.view(n_heads, head_dim // 2, 2, -1)  # (h, pair i, member j, D): Meta row 2i + j
    return per_head.transpose(1, 2).reshape(w.shape)  # (h, j, i, D): Hugging Face row j·d/2 + i


check_exercise(meta_to_hf_solution, layouts.meta_to_hf_qk, raw_q, 9)

# %% [markdown]
# **Exercise 2.** Reassemble a Meta checkpoint's `wq` for layer 0 from the two shards written above and
# convert it to our layout: the result must equal the loaded model's `q_proj`.

# %%
def loaded_q_proj(shard_list):
    return from_meta.blocks[0].attn.q_proj.weight


# %%
# NBVAL_CHECK_OUTPUT
def q_proj_from_shards(shard_list: list[dict]) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_exercise(q_proj_from_shards, loaded_q_proj, shards)

# %% solution
# Solution to exercise 2: q_proj_from_shards
# NBVAL_CHECK_OUTPUT
def q_proj_from_shards_solution(shard_list: list[dict]) -> torch.Tensor:
    wq = torch.cat([s["layers.0.attention.wq.weight"] for s in shard_list], dim=0)  # column-parallel: rows
    return layouts.meta_to_hf_qk(wq, tiny_cfg.num_attention_heads)


check_exercise(q_proj_from_shards_solution, loaded_q_proj, shards)

# %% [markdown]
# The checkpoints written here (about 130 MB, mostly the 128,256-row embedding and output matrices) go:

# %%
shutil.rmtree(workdir)

# %% [markdown]
# ## What to remember
# - Meta and GGUF pair RoPE dims `(2i, 2i+1)`, Hugging Face pairs `(i, i + d/2)`; the weights convert by
#   permuting the rows of `wq` and `wk` within each head (even rows, then odd). Nothing else is permuted.
# - Meta checkpoints are tensor-parallel shards: column-parallel matrices split by rows, `wo`/`w2` by
#   columns, norms replicated; `load_model` reads Meta, Hugging Face and GGUF to the same parameters.
# - Verify against an independent reference (`transformers.LlamaForCausalLM` on the same weights) on
#   full logits at every position.
# - The wrong q/k layout leaves distance-0 scores, and so position 0, intact: the first divergent position
#   is 1. A test that looks at one position cannot catch it.
