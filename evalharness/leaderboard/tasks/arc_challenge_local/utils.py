"""Prompt pieces of arc_challenge_local (same text as lm-eval's arc_challenge)."""


def question_prompt(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def answer_texts(doc: dict) -> list[str]:
    return list(doc["choices"]["text"])


def answer_index(doc: dict) -> int:
    """Position of answerKey among the choice labels ("A".."E" or "1".."5")."""
    return list(doc["choices"]["label"]).index(doc["answerKey"])
