"""Text to train SAEs on that is here offline and may be used: the Python Language Reference.

CPython ships the reference's topics as plain text (``pydoc_data.topics``, what ``help("assert")`` prints;
about 465,000 characters, ~110,000 SmolLM2 tokens in 79 topics) under the PSF License Version 2, which allows
use, copying and derivative works. Nothing is downloaded and nothing is written into this repository.
``python_reference_texts()`` splits it into paragraphs-sized texts in a fixed order; ``split_texts`` keeps a
held-out tail for evaluation.
"""

from __future__ import annotations

CORPUS_SOURCE = "the Python Language Reference topics shipped with CPython (pydoc_data.topics), PSF License 2"


def python_reference_texts(max_chars: int = 2000) -> list[str]:
    """The reference topics in a fixed order, each cut at paragraph breaks into texts of <= ~``max_chars``."""
    from pydoc_data.topics import topics

    texts: list[str] = []
    for name in sorted(topics):
        current = ""
        for paragraph in topics[name].split("\n\n"):
            if current and len(current) + len(paragraph) > max_chars:
                texts.append(current)
                current = ""
            current += paragraph + "\n\n"
        if current.strip():
            texts.append(current)
    return texts


def split_texts(texts: list[str], held_out: float = 0.1) -> tuple[list[str], list[str]]:
    """``(training, evaluation)``: every ``1/held_out``-th text is held out (spread over all topics)."""
    every = max(round(1 / held_out), 2)
    evaluation = texts[::every]
    training = [text for index, text in enumerate(texts) if index % every]
    return training, evaluation
