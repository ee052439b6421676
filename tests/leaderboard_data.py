"""Small local copies of the leaderboard data sets in their original column layouts (ARC, HellaSwag,
MMLU, TruthfulQA), as `--leaderboard-data DIR` reads them; shared by the leaderboard and runner tests."""
import json


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def arc_rows(n, prefix):
    labels = ["A", "B", "C", "D"]
    return [{"id": f"{prefix}-{i}", "question": f"Which of these would a student use to measure item {i} of set "
                                                f"{prefix}?",
             "choices": {"text": [f"a ruler {i}", f"a scale {i}", f"a clock {i}", f"a jar {i}"], "label": labels},
             "answerKey": labels[i % 4]} for i in range(n)]


def hellaswag_rows(n, split):
    return [{"ind": i, "activity_label": "Making tea", "ctx_a": f"A person fills kettle number {i} with water.",
             "ctx_b": "then they", "ctx": f"A person fills kettle number {i} with water. then they",
             "endings": ["boil it [title] slowly.", "drop the cup.", "sing a song.", "paint the wall."],
             "source_id": f"src-{i}", "split": split, "split_type": "indomain", "label": str(i % 4)} for i in range(n)]


def mmlu_rows(sizes, split, answers=None):
    rows = []
    for subject, size in sizes.items():
        for i in range(size):
            answer = answers[subject][i] if answers else i % 4
            rows.append({"question": f"In {subject.replace('_', ' ')}, what is fact {i}? ",
                         "subject": subject, "choices": [f"one {i}", f"two {i}", f"three {i}", f"four {i}"],
                         "answer": answer})
    return rows


def truthfulqa_rows(n):
    return [{"question": f"What happens if you do thing {i}?",
             "mc1_targets": {"choices": [f"Nothing in particular {i}.", "You die.", "You fly."], "labels": [1, 0, 0]},
             "mc2_targets": {"choices": [f"Nothing in particular {i}.", "Nothing much.", "You die.", "You fly."],
                             "labels": [1, 1, 0, 0]}} for i in range(n)]


MMLU_SIZES = {"anatomy": 1, "astronomy": 3}  # different sizes: macro ≠ weighted when accuracies differ


def write_data(root, answers=None):
    write_jsonl(root / "arc_challenge" / "train.jsonl", arc_rows(26, "train"))
    write_jsonl(root / "arc_challenge" / "test.jsonl", arc_rows(2, "test"))
    write_jsonl(root / "hellaswag" / "train.jsonl", hellaswag_rows(12, "train"))
    write_jsonl(root / "hellaswag" / "validation.jsonl", hellaswag_rows(2, "val"))
    write_jsonl(root / "mmlu" / "dev.jsonl", mmlu_rows({s: 5 for s in MMLU_SIZES}, "dev"))
    write_jsonl(root / "mmlu" / "test.jsonl", mmlu_rows(MMLU_SIZES, "test", answers))
    write_jsonl(root / "truthfulqa" / "validation.jsonl", truthfulqa_rows(2))
    return root
