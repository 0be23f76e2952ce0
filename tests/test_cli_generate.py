"""The ``llama3-lab generate`` and ``llama3-lab chat`` commands, on the embedded SmolLM2."""

from __future__ import annotations

import pytest


@pytest.fixture
def cli_with_smollm2(smollm2, monkeypatch):
    import llama3_lab.loading

    monkeypatch.setattr(llama3_lab.loading, "load_model", lambda *a, **k: smollm2)
    from llama3_lab import cli

    return cli


def test_cli_generate_streams_the_answer(cli_with_smollm2, capsys) -> None:
    argv = [
        "generate",
        "What is the capital of France?",
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
    ]
    assert cli_with_smollm2.main(argv) == 0
    assert capsys.readouterr().out == "The capital of France is Paris.\n"
    assert cli_with_smollm2.main(["generate", "x", "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_cli_chat_keeps_the_conversation_and_obeys_commands(cli_with_smollm2, capsys, monkeypatch) -> None:
    import io

    import llama3_lab.generation as generation

    prompts = []
    real_generate = generation.generate

    def spy(model, prompt, **kwargs):
        prompts.append([dict(m) for m in prompt])
        return real_generate(model, prompt, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    lines = "What is the capital of France?\nAnd of Italy?\n/reset\nHello\n/exit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert cli_with_smollm2.main(["chat", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0] == "The capital of France is Paris."
    assert [len(p) for p in prompts] == [1, 3, 1]  # the second turn carries the first; /reset forgets it
    assert prompts[1][1] == {"role": "assistant", "content": out[0]}
    assert prompts[2] == [{"role": "user", "content": "Hello"}]
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))  # EOF ends the chat as well
    assert cli_with_smollm2.main(["chat", "--temperature", "0", "--max-new-tokens", "3"]) == 0
