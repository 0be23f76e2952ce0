"""LlamaConfig.explain(): every field and derived figure explained, rendered as text, Markdown and HTML."""

from __future__ import annotations

import json

import pytest
from config_reference import (
    CONFIG_JSON,
    LLAMA31_8B_PARAMS,
    LLAMA32_1B_HF,
)

from llama3_lab.cli import explain_path
from llama3_lab.config import LlamaConfig
from llama3_lab.config_explain import ConfigExplanation

pytest_plugins = ["config_fixtures"]  # llama3_8b, smollm2_gguf, smollm2_reader


def test_explain_covers_every_key_and_renders(llama3_8b: LlamaConfig) -> None:
    keys = set(json.loads(CONFIG_JSON.read_text()))
    explanation = llama3_8b.explain()
    assert isinstance(explanation, ConfigExplanation)
    assert keys <= set(explanation.fields)
    assert all(
        row.explanation and "Not used by llama3-lab" not in row.explanation for row in explanation.rows
    )

    text, markdown, page = explanation.to_text(), explanation.to_markdown(), explanation._repr_html_()
    assert str(explanation) == text
    for key in keys:
        assert f"\n{key} = " in text
        assert f"| `{key}` |" in markdown
        assert f"<code>{key}</code>" in page
    assert page.count("<tr>") == len(explanation.rows) + len(explanation.derived) + 2  # + two header rows
    assert markdown.count("\n| `") == len(explanation.rows) + len(explanation.derived)
    for figure in ("8,030,261,248", "131,072 B", "16,060,522,496", "14.96 GiB", "1.00 GiB"):
        assert figure in text


def test_explanations_are_right_where_write_ups_are_wrong(llama3_8b: LlamaConfig) -> None:
    e = llama3_8b.explain()
    assert "bias vectors" in e["attention_bias"].explanation and "q_proj" in e["attention_bias"].explanation
    assert "nothing to do with attention masks" in e["attention_bias"].explanation
    assert "standard deviation" in e["initializer_range"].explanation
    assert "Irrelevant for a trained checkpoint" in e["initializer_range"].explanation
    assert "inv_freq_i = θ^(−2i/d)" in e["rope_theta"].explanation
    assert (
        "K = 8" in e["num_key_value_heads"].explanation
        and "G = H/K = 4" in e["num_key_value_heads"].explanation
    )
    assert "nothing to emulate" in e["pretraining_tp"].explanation
    assert "Not a hard-coded buffer" in e["max_position_embeddings"].explanation
    assert "1e-6" in e["rms_norm_eps"].explanation
    assert "null: no RoPE scaling" in e["rope_scaling"].explanation
    assert "separate [V, D]" in e["tie_word_embeddings"].explanation
    assert "128009 <|eot_id|>" in e["eos_token_id"].explanation

    scaled = LlamaConfig.from_dict(LLAMA32_1B_HF).explain()
    assert (
        "29 pairs (0-28) unchanged"
        in LlamaConfig.from_params(LLAMA31_8B_PARAMS).explain()["rope_scaling"].explanation
    )
    assert "factor 32" in scaled["rope_scaling"].explanation
    assert "true: the unembedding" in scaled["tie_word_embeddings"].explanation
    assert scaled["params.unembedding"].value == "0"


def test_unknown_extras_are_listed() -> None:
    c = LlamaConfig.from_dict({**LLAMA32_1B_HF, "my_custom_flag": 3})
    row = c.explain()["my_custom_flag"]
    assert row.value == "3" and "kept in `extra`" in row.explanation


def test_explain_path_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    text = explain_path(CONFIG_JSON)
    assert "num_key_value_heads = 8" in text and "8,030,261,248" in text
    cli = pytest.importorskip("llama3_lab.cli")
    assert cli.main(["explain", str(CONFIG_JSON)]) == 0
    assert "kv_cache_bytes_per_token(bf16) = 131,072 B" in capsys.readouterr().out


def test_explain_gguf_config(smollm2_reader) -> None:
    text = LlamaConfig.from_gguf(smollm2_reader).explain().to_text()
    assert "134,515,008" in text and "null: no single storage dtype" in text
    assert "K = 3 key/value heads" in text and "θ = 100,000" in text
