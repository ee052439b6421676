"""HellaSwag text clean-up: the WikiHow half of the data carries markup such as `[title]` and
`[step]`; the query is `activity_label: ctx_a Ctx_b` and each ending is cleaned the same way."""
import re

_BRACKETED = re.compile(r"\[[^\]\n]*\]")


def clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    return text.replace("  ", " ")


def _doc(doc: dict) -> dict:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": clean(doc["activity_label"] + ": " + context),
        "choices": [clean(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def process_docs(dataset):
    return dataset.map(_doc)
