"""The per-subject document filters of mmlu_local (one file holds every subject, as cais/mmlu's
`all` config; lm-eval's own MMLU tasks read one dataset config per subject instead).

`only_<subject>` (any subject name made of lower-case letters, digits and underscores) is created
on demand: it keeps the rows of a split whose `subject` column equals <subject>.
"""
import re

_SUBJECT = re.compile(r"[a-z0-9_]+")


def subject_filter(subject: str):
    def keep(dataset):
        return dataset.filter(lambda subjects: [s == subject for s in subjects], input_columns="subject",
                              batched=True)

    keep.__name__ = f"only_{subject}"
    return keep


def __getattr__(name: str):
    if name.startswith("only_") and _SUBJECT.fullmatch(name[len("only_"):]):
        return subject_filter(name[len("only_"):])
    raise AttributeError(name)
