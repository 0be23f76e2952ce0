# %% [markdown]
# # 01 · The tokenizer: from bytes to token ids
#
# A language model never sees text. It sees integers, and Llama 3 gets them from a byte-level BPE tokenizer
# with 128,000 learned tokens plus 256 special ones. Getting this step wrong (a different split pattern, a
# doubled `<|begin_of_text|>`, a user's text turned into control tokens) breaks a model silently.
#
# **You will learn:**
# - byte-level BPE from scratch: train a few merges on a toy corpus, then encode with them;
# - the real Llama 3 tokenizer: its split pattern (with `regex`), its ranks, its 256 special tokens;
# - to re-derive Llama 3's token ids by hand and check them against the package;
# - why a user typing `<|eot_id|>` does **not** produce the special token, and why that matters;
# - which texts start with a BOS token (Llama 3: `<|begin_of_text|>`; SmolLM2: none) and what a stray one
#   does to a greedy continuation;
# - common mistakes: the double BOS, and decoding one token at a time.
#
# **Runs on:** the real Llama 3 tokenizer (Meta's `tokenizer.model`, fetched and cached on first use) and the
# embedded SmolLM2-135M-Instruct tokenizer for comparison; section 6 also loads the embedded SmolLM2-135M-Instruct
# model (CPU, float32) for one greedy continuation. CPU only; `LLAMA3_LAB_WEIGHTS` changes nothing here.
#
# *Built with Meta Llama 3.* The Llama 3 tokenizer is Meta's, under the Llama 3 Community License.

# %%
from collections import Counter

import ipywidgets as widgets
import regex
import tiktoken
import torch

from llama3_lab import load_tokenizer, viz
from llama3_lab.notebook import check_exercise, setup_notebook
from llama3_lab.tokenizer import LLAMA3_PATTERN, read_tiktoken_ranks

setup_notebook()

# %% [markdown]
# ## 1. Why bytes
#
# Any string is a sequence of UTF-8 bytes, and there are only 256 byte values. A tokenizer whose alphabet is
# the 256 bytes can encode *every* string, in any script, emoji included, with no "unknown token". The price:
# sequences get long (one token per byte). BPE fixes that by learning to merge frequent byte sequences into
# single tokens.

# %%
# NBVAL_CHECK_OUTPUT
text = "naïve café 🦙"
print(len(text), "characters ->", len(text.encode("utf-8")), "bytes:", list(text.encode("utf-8")))

# %% [markdown]
# ## 2. BPE from scratch on a toy corpus
#
# Training is greedy: split the corpus into *pieces* (roughly words, see section 3), count every adjacent
# pair of tokens inside the pieces, merge the most frequent pair into a new token everywhere, repeat. Each
# new token gets the next **rank**: 256, 257, ... (ranks 0-255 are the single bytes). Pairs never cross a piece
# boundary, so no token glues a word to the next one.

# %%
corpus = (
    "the cat sat on the mat. the cat ate the rat. "
    "a fat cat and a thin rat sat on a flat mat, and the rat ran."
) * 3
pieces = regex.findall(LLAMA3_PATTERN, corpus)
word_counts = Counter(piece.encode("utf-8") for piece in pieces)
print(len(pieces), "pieces,", len(word_counts), "distinct, e.g.", pieces[:8])


def merge(tokens: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    """Replace every occurrence of the adjacent pair by its concatenation, left to right."""
    merged, i = [], 0
    while i < len(tokens):
        if i + 1 < len(tokens) and (tokens[i], tokens[i + 1]) == pair:
            merged.append(tokens[i] + tokens[i + 1])
            i += 2
        else:
            merged.append(tokens[i])
            i += 1
    return merged


def train_bpe(word_counts: Counter, n_merges: int) -> dict[bytes, int]:
    """Ranks: the 256 single bytes, then one new token per merge, most frequent pair first."""
    ranks = {bytes([b]): b for b in range(256)}
    words = {word: [bytes([b]) for b in word] for word in word_counts}
    for _ in range(n_merges):
        pair_counts = Counter()
        for word, tokens in words.items():
            for pair in zip(tokens, tokens[1:]):
                pair_counts[pair] += word_counts[word]
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda pair: (pair_counts[pair], pair))  # ties: a fixed order
        ranks.setdefault(best[0] + best[1], len(ranks))
        words = {word: merge(tokens, best) for word, tokens in words.items()}
    return ranks


toy_ranks = train_bpe(word_counts, n_merges=20)
learned = sorted((rank, token) for token, rank in toy_ranks.items() if rank >= 256)

# %%
# NBVAL_CHECK_OUTPUT
for rank, token in learned[:12]:
    print(rank, repr(token.decode()))

# %% [markdown]
# **Encoding** with learned ranks does not replay training. For each piece, start from its bytes and
# repeatedly merge the adjacent pair whose concatenation has the **lowest rank** (the merge learned earliest),
# until no adjacent pair is a known token. This is exactly what `tiktoken` does, so we can check our encoder
# against a `tiktoken.Encoding` built from the same toy ranks.

# %%
def encode_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Byte-level BPE of one piece: merge the lowest-rank adjacent pair until none is a token."""
    if piece in ranks:  # a whole piece that is a token is one id (tiktoken's shortcut)
        return [ranks[piece]]
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        candidates = [(ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        candidates = [(rank, i) for rank, i in candidates if rank is not None]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    return [i for piece in regex.findall(LLAMA3_PATTERN, text) for i in encode_piece(piece.encode(), ranks)]


toy = tiktoken.Encoding(name="toy", pat_str=LLAMA3_PATTERN, mergeable_ranks=toy_ranks, special_tokens={})
sample = "the fat rat sat on the cat."
ours = encode(sample, toy_ranks)
torch.testing.assert_close(torch.tensor(ours), torch.tensor(toy.encode(sample)))

# %%
# NBVAL_CHECK_OUTPUT
print(len(sample.encode()), "bytes ->", len(ours), "tokens:", [toy.decode([i]) for i in ours])

# %% [markdown]
# ## 3. The real Llama 3 tokenizer
#
# The same algorithm at scale: 128,000 ranks. Meta did not train them all from nothing: the Llama 3 paper
# says the vocabulary combines the 100K tokens of OpenAI's `tiktoken` with 28K additional tokens for
# languages other than English. The inheritance shows in the first ranks below: `!`, `"`, `#`, ... are the
# printable bytes in byte order, the start of the GPT-2 / tiktoken rank tables. `tokenizer.model` is just the
# rank table, one `base64(token) rank` per line. *Built with Meta Llama 3.*

# %%
# NBVAL_CHECK_OUTPUT
llama = load_tokenizer("llama3")
ranks = read_tiktoken_ranks(llama.model_path)
print(len(ranks), "ranks +", len(llama.special_tokens), "special tokens =", llama.n_vocab, "ids")
print("rank 0..4:", [ranks_token.decode() for ranks_token in sorted(ranks, key=ranks.get)[:5]])
assert sorted(ranks, key=ranks.get)[:5] == [bytes([byte]) for byte in range(ord("!"), ord("!") + 5)]
longest = max((t for t in ranks if t.strip()), key=len)  # the longest is 128 spaces: skip whitespace
print("longest non-space token:", len(longest), "bytes,", repr(longest.decode("utf-8", errors="replace")))

# %% [markdown]
# ### The split pattern
#
# Before any merge, text is cut into pieces by a regular expression, and BPE runs inside each piece. Llama 3's
# pattern (it needs the `regex` module for `\p{L}` letters and `\p{N}` digits):
# - contractions `'s 't 're 've 'm 'll 'd`, case-insensitive;
# - a word with at most one leading non-letter (usually the space: `" world"` is one piece);
# - numbers in groups of **at most 3 digits** (so `12345` → `123`, `45`: arithmetic-friendlier than arbitrary
#   chunks);
# - punctuation runs with their trailing newlines; newlines; whitespace not followed by a non-space.

# %%
# NBVAL_CHECK_OUTPUT
print(LLAMA3_PATTERN)
sentence = "I'm 12345 years old!\n\nHELLO world's   spaces"
print(regex.findall(LLAMA3_PATTERN, sentence))

# %% [markdown]
# ### Re-deriving Llama 3's ids by hand
#
# Our 20-line encoder from section 2, given Meta's rank table, must produce exactly the package's ids: the
# token id *is* the rank.

# %%
texts = [
    "Hello, world!",
    "This is a test sentence.",
    sentence,
    "naïve café 🦙 — Größenordnung, ничего, 東京",
    "def f(x):\n    return x ** 2  # 42",
]
for t in texts:
    torch.testing.assert_close(torch.tensor(encode(t, ranks)), torch.tensor(llama.encode(t)))

# %%
# NBVAL_CHECK_OUTPUT
ids = llama.encode("This is a test sentence.", bos=True, eos=True)
print(ids)
print(llama.encode("Hello, world!"), llama.encode("user"), llama.encode("assistant"), llama.encode("\n\n"))
print(repr(llama.decode([2983])))
assert ids == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]

# %% [markdown]
# ## 4. Special tokens, and why typed `<|eot_id|>` is not special
#
# Ids 128000-128255 are not BPE tokens: they are control signals the model learned during training:
# `<|begin_of_text|>` starts every sequence, `<|start_header_id|>`/`<|end_header_id|>` frame a role name,
# `<|eot_id|>` ends a turn (a stop token for chat), and most of the rest are reserved.

# %%
# NBVAL_CHECK_OUTPUT
for name, i in list(llama.special_tokens.items())[:10]:
    print(i, name)
print("stop ids:", sorted(llama.stop_ids))

# %% [markdown]
# If the text `<|eot_id|>` typed by a user became id 128009, any user could end their turn early and write a
# fake assistant (or system) turn after it: a prompt injection. So **special-token text is plain text** unless
# the caller explicitly allows it. Only the code that builds the chat format (notebook 10) allows it.

# %%
# NBVAL_CHECK_OUTPUT
typed = llama.encode("<|eot_id|>")
print("typed:  ", typed, llama.token_strings(typed))
print("allowed:", llama.encode("<|eot_id|>", allowed_special={"<|eot_id|>"}))
assert typed == [27, 91, 68, 354, 851, 91, 29]

# %% [markdown]
# ## 5. Seeing tokens
#
# A token strip draws each token as a box coloured by a value. Here: how many bytes each token covers. Common
# English words are one token; rare words, numbers and non-Latin scripts cost more tokens per byte.

# %%
view_text = "Tokenizers split 12345 into 123|45; naïve café 🦙 and ничего cost more tokens."
view_ids = llama.encode(view_text)
view_tokens = llama.token_strings(view_ids)
viz.token_strip(view_tokens, [len(b) for b in llama.token_bytes(view_ids)], label="bytes per token",
                title=f"Llama 3: {len(view_ids)} tokens", chars_per_row=60)

# %% [markdown]
# SmolLM2 (the model the other notebooks run on) has a 49,152-token vocabulary and splits **every digit**:
# the same text takes more tokens. Vocabulary size is a trade-off between sequence length and embedding size.

# %%
smol = load_tokenizer("smollm2-135m-instruct")
smol_ids = smol.encode(view_text)
viz.token_strip(smol.token_strings(smol_ids), [len(b) for b in smol.token_bytes(smol_ids)],
                label="bytes per token", title=f"SmolLM2: {len(smol_ids)} tokens", chars_per_row=60)

# %%
# NBVAL_CHECK_OUTPUT
print("Llama 3:", len(view_ids), "tokens; SmolLM2:", len(smol_ids), "tokens")
print("SmolLM2 digits:", smol.token_strings(smol.encode("12345")))

# %% [markdown]
# ### Live: type text, see tokens
#
# Edit the text box; each token is shown with its id. (In a live JupyterLab kernel this updates as you type.)

# %%
# NBVAL_IGNORE_OUTPUT
import html


def render_tokens(text: str) -> str:
    ids = llama.encode(text)
    boxes = "".join(
        f"<span style='border:1px solid #888;margin:1px;padding:0 2px;background:hsl({(37 * k) % 360},70%,90%)'>"
        f"{html.escape(piece).replace(' ', '␣')}<sub>{i}</sub></span>"
        for k, (piece, i) in enumerate(zip(llama.token_strings(ids), ids))
    )
    return f"<div style='line-height:2'>{len(ids)} tokens: {boxes}</div>"


text_box = widgets.Text(value="Hello, world!", description="text", layout=widgets.Layout(width="90%"))
token_view = widgets.HTML(render_tokens(text_box.value))
text_box.observe(lambda change: setattr(token_view, "value", render_tokens(change["new"])), names="value")
widgets.VBox([text_box, token_view])

# %%
# NBVAL_CHECK_OUTPUT
text_box.value = "user: <|eot_id|>"
n_tokens = len(llama.encode(text_box.value))
assert token_view.value.startswith(f"<div style='line-height:2'>{n_tokens} tokens")
assert "<sub>128009</sub>" not in token_view.value  # typed special-token text stays plain text
print(n_tokens, "tokens shown for", repr(text_box.value))
text_box.value = "Hello, world!"  # put the box shown above back as it was
assert token_view.value == render_tokens("Hello, world!")

# %% [markdown]
# ## 6. Does a text start with BOS? Each tokenizer decides
#
# A BOS (beginning-of-sequence) token is a fixed first token. Whether a plain text gets one is part of each
# tokenizer's configuration, not of the architecture, and the two tokenizers here disagree. Both files say
# so themselves; read them directly (`json` for Hugging Face's Llama 3 `tokenizer.json`, the `gguf` package
# for SmolLM2's GGUF header) and compare with the `add_bos` the package's tokenizers carry:

# %%
# NBVAL_CHECK_OUTPUT
import json

from gguf import GGUFReader

from llama3_lab.assets import asset_path

template = json.loads(asset_path("llama3/tokenizer.json").read_text())["post_processor"]["processors"][-1]
single = [next(iter(part.values()))["id"] for part in template["single"]]
header = GGUFReader(asset_path("smollm2-135m-instruct.gguf"))
field = header.fields["tokenizer.ggml.add_bos_token"]
smol_file_adds_bos = bool(field.parts[field.data[0]][0])
print("Llama 3 tokenizer.json, one text:", single, "-> add_bos =", llama.add_bos)
print("SmolLM2 GGUF: tokenizer.ggml.add_bos_token =", smol_file_adds_bos, "-> add_bos =", smol.add_bos)
print("SmolLM2's BOS id:", smol.bos_id, smol.token_strings([smol.bos_id]))
assert single == ["<|begin_of_text|>", "A"] and llama.add_bos is True
assert smol_file_adds_bos is False and smol.add_bos is False
assert smol.token_strings([smol.bos_id]) == ["<|im_start|>"]

# %% [markdown]
# So Llama 3 texts start with `<|begin_of_text|>` (Meta's reference also encodes every prompt with
# `bos=True`), and SmolLM2 texts start with their first word. SmolLM2's BOS id is `<|im_start|>`, the token
# that opens every chat turn (notebook 10): its chats start with it, its plain texts do not.
#
# `to_tokens` and `to_str_tokens` (on every model, also used by `generate` and `run_with_cache`) follow
# that setting with `prepend_bos=None`, the default; `True` or `False` chooses for you. They read the tokenizer
# a model carries, so for Llama 3 a tiny random model holding the Llama 3 tokenizer is enough (its weights
# play no part in encoding). SmolLM2 is the real embedded model, loaded here for the next experiment.

# %%
# NBVAL_CHECK_OUTPUT
from llama3_lab import load_model
from llama3_lab.config import LlamaConfig
from llama3_lab.model import LlamaModel

tiny_cfg = LlamaConfig.tiny(vocab_size=llama.n_vocab, bos_token_id=llama.bos_id, eos_token_id=llama.eos_id,
                            tie_word_embeddings=True)
llama_tiny = LlamaModel(tiny_cfg, tokenizer=llama)
smol_model = load_model("smollm2-135m-instruct", progress=False)  # the embedded model, CPU, float32
prompt = "The largest planet in the solar system is"
first = {}
for label, model in [("Llama 3", llama_tiny), ("SmolLM2", smol_model)]:
    for prepend_bos in (None, True, False):
        strings = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
        first[label, prepend_bos] = strings[0]
        print(f"{label:8} prepend_bos={str(prepend_bos):5} -> {len(strings)} tokens, first {strings[0]!r}")
assert first["Llama 3", None] == first["Llama 3", True] == "<|begin_of_text|>" != first["Llama 3", False]
assert first["SmolLM2", None] == first["SmolLM2", False] == "The" and first["SmolLM2", True] == "<|im_start|>"

# %% [markdown]
# **Why it matters: a stray `<|im_start|>`.** A model's first position is special (notebooks 04 and 06
# show how much), and SmolLM2 never sees `<|im_start|>` before a plain text unless someone puts it there.
# Continue the same prompt greedily, once as the tokenizer encodes it and once with `prepend_bos=True`:

# %%
# NBVAL_CHECK_OUTPUT
plain = smol_model.generate(prompt, max_new_tokens=8, temperature=0)
stray = smol_model.generate(prompt, max_new_tokens=8, temperature=0, prepend_bos=True)
jupiter = smol.encode(" Jupiter")
assert len(jupiter) == 1
with torch.no_grad():
    p_jupiter = {
        name: smol_model(smol_model.to_tokens(prompt, prepend_bos=bos))[0, -1].softmax(-1)[jupiter[0]].item()
        for name, bos in [("plain", None), ("stray", True)]
    }
print("as encoded:           ", repr(prompt + plain))
print("with <|im_start|> first:", repr(prompt + stray))
print(f"p(' Jupiter' next): {p_jupiter['plain']:.3f} as encoded, {p_jupiter['stray']:.3f} with <|im_start|> first")
assert plain.startswith(" Jupiter") and "Jupiter" not in stray
assert stray.tokens != plain.tokens and p_jupiter["stray"] < p_jupiter["plain"] / 2

# %% [markdown]
# One token that SmolLM2's own tokenizer would not have added changes its answer: as encoded, the greedy
# continuation names Jupiter; with `<|im_start|>` in front it does not, and the probability of ` Jupiter` as
# the next token drops (the numbers above). When you compare runs, notebooks or libraries, check the first
# token: `to_str_tokens` shows it.

# %% [markdown]
# ## 7. Common mistakes
#
# **Double BOS.** `<|begin_of_text|>` must appear exactly once. Chat formatting already adds it; encoding the
# rendered chat again with `bos=True` (or a library adding it "by default") gives two. The model was never
# trained on that, and its outputs shift.

# %%
# NBVAL_CHECK_OUTPUT
chat_text = llama.render_chat([{"role": "user", "content": "Hi"}])
right = llama.encode_chat([{"role": "user", "content": "Hi"}])
wrong = llama.encode(chat_text, bos=True, allowed_special="all")
print("right:", right[:5], "...")
print("wrong:", wrong[:5], "...")
assert right.count(llama.bos_id) == 1 and wrong.count(llama.bos_id) == 2

# %% [markdown]
# **Decoding one token at a time.** A token is bytes, not characters: 🦙 is 4 UTF-8 bytes spread over three
# tokens. Decoding each token separately gives replacement characters; streaming output must buffer bytes
# until they form complete characters.

# %%
# NBVAL_CHECK_OUTPUT
llama_ids = llama.encode(" 🦙")
print(llama.token_strings(llama_ids))
print("one at a time:", [llama.decode([i]) for i in llama_ids])
print("all together: ", repr(llama.decode(llama_ids)))

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `merge_pair(tokens, pair)`: replace every adjacent occurrence of `pair` in a list of
# byte strings by the concatenation, scanning left to right (so `a a a` with pair `(a, a)` gives `aa a`).

# %%
# NBVAL_CHECK_OUTPUT
def merge_pair(tokens: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    raise NotImplementedError  # your code here


example = [b"a", b"a", b"a", b"t", b"h", b"e", b"a", b"a"]
check_exercise(merge_pair, merge, example, (b"a", b"a"))

# %% solution
# Solution to exercise 1: merge_pair
# NBVAL_CHECK_OUTPUT
def merge_pair_solution(tokens: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while i < len(tokens):
        if tokens[i : i + 2] == list(pair):
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


check_exercise(merge_pair_solution, merge, example, (b"a", b"a"))

# %% [markdown]
# **Exercise 2.** Encode one pre-tokenized piece with Meta's `ranks`: start from single bytes and merge the
# lowest-rank adjacent pair until none is a token. The check compares with `llama.encode`.

# %%
# NBVAL_CHECK_OUTPUT
def bpe(piece: str) -> list[int]:
    raise NotImplementedError  # your code here, using `ranks`


check_exercise(bpe, llama.encode, " unbelievably")

# %% solution
# Solution to exercise 2: bpe
# NBVAL_CHECK_OUTPUT
def bpe_solution(piece: str) -> list[int]:
    parts = [bytes([b]) for b in piece.encode("utf-8")]
    while True:
        pairs = [(ranks.get(a + b, float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        if not pairs or min(pairs)[0] == float("inf"):
            return [ranks[p] for p in parts]
        _, i = min(pairs)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


check_exercise(bpe_solution, llama.encode, " unbelievably")
check_exercise(bpe_solution, llama.encode, " Größenordnung")

# %% [markdown]
# ## What to remember
# - Byte-level BPE: 256 byte tokens + learned merges; encoding merges the lowest-rank pair first; no unknown tokens.
# - Llama 3: split pattern → BPE per piece with 128,000 ranks (id = rank) → 256 special ids from 128000.
# - Numbers split in groups of 3 digits (SmolLM2: single digits).
# - Special-token text from users stays plain text; only the chat formatter inserts control tokens.
# - BOS follows each tokenizer's own configuration: Llama 3 texts start with `<|begin_of_text|>`, SmolLM2 texts
#   (GGUF `add_bos_token = false`) with their first word; `prepend_bos=True`/`False` chooses explicitly.
# - Exactly one `<|begin_of_text|>`; decode bytes, not single tokens, when streaming.
