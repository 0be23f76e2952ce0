"""``benchmarks/peers.py`` without the peers: a peer that does not import is skipped with its reason and
nothing is loaded; the rows a measurement makes read as the table expects. (The measurement itself
needs the ``bench`` extra: ``python benchmarks/peers.py --reps 3``.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def peers(monkeypatch):
    """``benchmarks.peers`` with both peers unimportable, whether or not they are installed."""
    monkeypatch.syspath_prepend(str(ROOT))
    for module in ("transformer_lens", "transformer_lens.model_bridge", "nnsight"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` of a None entry raises ImportError
    from benchmarks import peers

    return peers


def test_missing_peers_are_skipped_with_their_reason(peers):
    printed: list[str] = []
    threads = torch.get_num_threads()
    rows = peers.measure_peers(None, reps=1, echo=printed.append)  # None: would load ours if needed
    assert [row.metric for row in rows] == ["transformer_lens: skipped", "nnsight: skipped"]
    assert all("not installed" in row.value and "bench" in row.value for row in rows)
    assert all(row.goal == "" and row.verdict == "" for row in rows)
    assert len(printed) == 2 and printed[0].startswith("skipping transformer_lens: not installed")
    assert torch.get_num_threads() == threads


def test_main_json_without_peers(peers, capsys):
    threads = torch.get_num_threads()
    try:
        peers.main(["--reps", "1", "--json"])
    finally:
        torch.set_num_threads(threads)
    payload = json.loads(capsys.readouterr().out)
    assert [row["phase"] for row in payload["rows"]] == ["peers", "peers"]
    assert payload["versions"]["torch"] == torch.__version__


def test_rows_from_figures(peers):
    seconds = {"ours": [0.10, 0.12, 0.11], "peer": [0.12, 0.12, 0.11]}
    figures = {
        "attn": "eager",
        "load_s": 0.5,
        "saved": "run_with_cache(), every hook point",
        "max_abs_dlogit": 5e-5,
        "max_abs_dlogit_vs_cache": 0.0,
        "logit_scale": 30.0,
        "forward_s": seconds,
        "cache_s": seconds,
        "cache_tensors": 10,
        "cache_mb": 2.0,
        "generate_s": {"ours": [1.0, 1.0], "peer": [2.0, 2.0], "peer_no_kv": [4.0, 4.0]},
        "same_tokens": {"peer": False, "peer_no_kv": True},
        "first_difference": {"peer": 1, "peer_no_kv": None},
    }
    rows = peers._peer_rows("TransformerBridge", "transformer_lens 9.9", figures, 128, 32, 20, 3.0)
    text = "\n".join(f"{row.metric}: {row.value}" for row in rows)
    assert "within 0.0001: yes" in text
    assert "10 tensors (2 MB) / ours run_with_cache: 20 tensors (3 MB)" in text
    assert "tok/s (16.0 / 32.0; same tokens: False, first differs at new token 1): 0.500" in text
    assert "use_past_kv_cache=False) / ours, tok/s (8.0 / 32.0; same tokens: True): 0.250" in text


def test_tensor_stats_counts_views_once(peers):
    base = torch.zeros(250_000)  # 1 MB
    count, mb = peers.tensor_stats([base, base[:10], (torch.zeros(250_000), None)])
    assert count == 3 and mb == pytest.approx(2.0)
