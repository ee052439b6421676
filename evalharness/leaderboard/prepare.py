"""Make a ready-to-use copy of these task YAMLs for plain `lm_eval` runs.

    python -m evalharness.leaderboard.prepare --data /data/leaderboard --out /tmp/eh_tasks
    lm_eval --model hf --model_args pretrained=... --include_path /tmp/eh_tasks \
        --tasks arc_challenge_local --num_fewshot 25

Copies the shipped tasks/lm-eval/ folder to --out, rewrites each mirror's _data.yaml to the files found in --data
(DIR/arc_challenge/, DIR/hellaswag/, DIR/mmlu/, DIR/truthfulqa/, DIR/passkey/; see tasks/lm-eval/README.md) and
generates the per-subject MMLU tasks. Mirrors without data in --data are skipped with a note.
"""
import argparse
import sys

from .mirrors import MIRRORS, copy_tasks, point_mirror
from .protocol import LeaderboardError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with one sub-folder of split files per dataset")
    parser.add_argument("--out", required=True, help="where the prepared task folder goes (lm_eval --include_path)")
    parser.add_argument("--tasks", default=",".join(MIRRORS), help="comma list of mirrors to point at --data")
    args = parser.parse_args(argv)
    out = copy_tasks(args.out)
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if name not in MIRRORS:
            print(f"unknown mirror {name!r}; mirrors: {', '.join(MIRRORS)}", file=sys.stderr)
            return 2
        try:
            used = point_mirror(out, name, args.data)
        except LeaderboardError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        print(f"{name}: {used['dataset_path']} {used['data_files']}" + (
            f" ({used['subjects']} subjects)" if "subjects" in used else ""))
    print(f"lm_eval --include_path {out} --tasks <mirror>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
