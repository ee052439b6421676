"""The plan and the cell runner: the task registry, the failure policy, --dry-run, and data-parallel
sharding of every task (passkey and leaderboard under 2 gloo processes compute each cell once)."""

import re
import time
from pathlib import Path

import pytest
import torch
from conftest import write_corpus
from leaderboard_data import write_data

from evalharness import cli, registry, runner
from evalharness.errors import NonFiniteError, UsageError
from evalharness.methods import ScalingSpec
from evalharness.perplexity import engine as perplexity
from evalharness.plan import Cell, Plan
from evalharness.results import Manifest, ResultStore
from evalharness.task import TaskDefinition

pytestmark = pytest.mark.usefixtures("isolated_cache")


WORDS = "we prove the theorem by induction and rewrite with the lemma"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 2, WORDS, 200)


@pytest.fixture(scope="module")
def leaderboard_data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("lbdata"))


def test_registry_names_every_task_and_loads_its_definition():
    assert set(registry.task_names()) == {"perplexity", "passkey", "leaderboard", "temperature-sweep", "ruler"}
    for name in registry.task_names():
        definition = registry.definition(name)
        assert isinstance(definition, TaskDefinition) and definition.name == name
    with pytest.raises(UsageError, match="unknown task 'ppl'"):
        registry.definition("ppl")


def test_no_module_outside_the_task_packages_and_the_registry_names_a_task():
    """Adding a task is one package and one registry line: the shared layers (cli, runner, results,
    plots, report, ...) loop over the registry, so no name of a task appears in them, in code,
    docstrings or comments. The package of a task is the module path of its definition."""
    root = Path(registry.__file__).parent
    packages = {registry.TASKS[name].split(".")[1] for name in registry.task_names()}
    pattern = re.compile("|".join(re.escape(name).replace("\\-", "[-_ ]") for name in registry.task_names()),
                         re.IGNORECASE)
    shared = [path for path in sorted(root.rglob("*.py"))
              if path.relative_to(root).parts[0] not in packages and path.name != "registry.py"]
    assert len(shared) > 20  # cli/, analysis/, runner, results, plots, report, ... were all read
    hits = [f"{path.relative_to(root)}:{number}: {line.strip()}"
            for path in shared for number, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


class ScriptedTask(runner.Task):
    """A task whose cells raise what the test asks for: the runner's policy, seen from outside."""

    name, table = "scripted", "passkey"

    def __init__(self, outcomes):
        self.outcomes, self.ran, self.closed, self.finished = outcomes, [], False, False

    def cells(self, session):
        spec = ScalingSpec("base", original_ctx=256)
        return [Cell(self.name, spec, (i,), f"scripted|{i}") for i in range(len(self.outcomes))]

    def pending(self, cell, done):
        return True

    def run(self, cell, pending, session):
        self.ran.append(cell.unit[0])
        outcome = self.outcomes[cell.unit[0]]
        if outcome is not None:
            raise outcome
        return {"note": "ok"}

    def finish(self, session):
        self.finished = True

    def close(self):
        self.closed = True


def scripted_session(tiny, out):
    model, tokenizer, _ = tiny
    return runner.Session(model, tokenizer, "tiny", ResultStore(out), Manifest(out), show_progress=False)


def test_computation_failures_are_recorded_and_the_run_goes_on(tiny, tmp_path):
    task = ScriptedTask([NonFiniteError("NaN"), None, torch.OutOfMemoryError("CUDA out of memory"),
                         RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"),
                         None])
    session = scripted_session(tiny, tmp_path)
    failed = runner.run_cells(Plan(task.cells(session)), [task], session)
    assert task.ran == [0, 1, 2, 3, 4] and task.finished and task.closed
    assert failed == ["scripted|0", "scripted|2", "scripted|3"]
    cells = Manifest(tmp_path).data["cells"]
    assert cells["scripted|1"] == {**cells["scripted|1"], "status": "done", "note": "ok"}
    assert "NonFiniteError: NaN" == cells["scripted|0"]["error"]
    assert "OutOfMemoryError" in cells["scripted|2"]["error"]


def test_every_done_cell_records_its_wall_time_also_without_progress_bars(tiny, tmp_path):
    class SlowTask(ScriptedTask):
        def run(self, cell, pending, session):
            time.sleep(0.3)
            return super().run(cell, pending, session)

    task = SlowTask([None])
    session = scripted_session(tiny, tmp_path)
    runner.run_cells(Plan(task.cells(session)), [task], session)
    assert Manifest(tmp_path).data["cells"]["scripted|0"]["seconds"] >= 0.3


@pytest.mark.parametrize("bug", [ValueError("a programming mistake"), KeyError("column"),
                                 RuntimeError("shape mismatch"), UsageError("bad input")])
def test_anything_else_surfaces(tiny, tmp_path, bug):
    task = ScriptedTask([None, bug, None])
    session = scripted_session(tiny, tmp_path)
    with pytest.raises(type(bug)):
        runner.run_cells(Plan(task.cells(session)), [task], session)
    assert task.ran == [0, 1] and task.closed  # stopped at the bug, resources released
    assert list(Manifest(tmp_path).data["cells"]) == ["scripted|0"]


def tiny_args(out, *extra):
    return ["--model", "random:tiny", "--out", str(out), "--no-progress", "--no-plots", *extra]


def plan_lines(text):
    """{cell name: (state, tokens)} from the dry-run table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["done"] or parts[:2] == ["to", "do"]:
            state = "done" if parts[0] == "done" else "to do"
            rest = parts[1:] if state == "done" else parts[2:]
            rows[rest[-1]] = (state, rest[0])
    return rows


@pytest.mark.parametrize("task, extra, n_cells", [
    ("perplexity", ["--method", "base,yarn", "--lengths", "128,256"], 2 * 2),
    ("temperature-sweep", ["--temperatures", "1.0,1.2", "--lengths", "128,256"], 2 * 3),
    ("passkey", ["--method", "base,yarn", "--lengths", "300,400", "--depths", "2"], 2 * 2 * 2),
    ("leaderboard", ["--method", "base", "--leaderboard-tasks", "arc_challenge,mmlu"], 2),
])
def test_dry_run_prints_the_plan_and_computes_nothing(task, extra, n_cells, corpus, leaderboard_data,
                                                      tmp_path, capsys, monkeypatch):
    import transformers

    def no_forward(*args, **kwargs):
        raise AssertionError("--dry-run ran a forward pass")

    monkeypatch.setattr(transformers.LlamaModel, "forward", no_forward)  # random:tiny is a Llama
    monkeypatch.setattr(runner, "run_cells", no_forward)
    out = tmp_path / "out"
    corpus_option = ["--dataset", f"local:{corpus}"] if task in ("perplexity", "temperature-sweep") else []
    args = tiny_args(out, "--tasks", task, *corpus_option, *extra, "--dry-run")
    if task == "leaderboard":
        args += ["--leaderboard-data", str(leaderboard_data)]
    assert cli.main(args) == cli.EXIT_OK
    text = capsys.readouterr().out
    rows = plan_lines(text)
    assert len(rows) == n_cells and all(state == "to do" for state, _ in rows.values())
    assert f"plan: {n_cells} cells, 0 done, {n_cells} to do" in text
    if task == "leaderboard":  # lm-eval sizes its requests itself: no made-up token count
        assert all(tokens == "?" for _, tokens in rows.values())
        assert f"leaderboard: {n_cells} cells, 0 done, {n_cells} to do, tokens unknown until the task builds" in text
    assert not out.exists()  # nothing written, not even the folder


def test_dry_run_after_a_partial_run(corpus, tmp_path, capsys):
    from evalharness.memory import estimate_peak_bytes

    out = tmp_path / "out"
    common = ["--tasks", "perplexity", "--dataset", f"local:{corpus}", "--lengths", "128,256"]
    assert cli.main(tiny_args(out, *common, "--method", "base")) == cli.EXIT_OK
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    capsys.readouterr()
    dry_run = tiny_args(out, *common, "--method", "base,pi", "--factor", "2", "--dry-run")
    assert cli.main(dry_run) == cli.EXIT_OK
    text = capsys.readouterr().out
    rows = plan_lines(text)
    assert {name: state for name, (state, _) in rows.items()} == {
        f"perplexity|random:tiny|{spec}|local:{corpus}|doc{i}.txt|truncated": state
        for i in range(2) for spec, state in (("base", "done"), ("pi:2", "to do"))}
    # a static method needs one pass at the longest length per document: 256 tokens
    assert all(tokens == "256" for _, tokens in rows.values())
    assert "perplexity: 4 cells, 2 done, 2 to do, 512 tokens to process" in text
    # the memory column is memory.estimate_peak_bytes at the cell's longest forward
    from evalharness.models import load

    model, _, info = load("random:tiny", dtype="float32", device="cpu")
    expected = estimate_peak_bytes(model.config, info.dtype, 256, kv_cache=False,
                                   attn_impl=model.config._attn_implementation or "sdpa",
                                   n_params=sum(p.numel() for p in model.parameters()))["total"]
    assert f"{expected / 2**30:.2f} GiB" in text
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == before  # nothing computed or written


def test_dry_run_reads_no_weights_and_estimates_as_with_them(corpus, tmp_path, capsys, monkeypatch):
    """--dry-run on a checkpoint folder builds the model from its config on the meta device (a 70B
    plan needs no 140 GB download); the memory column equals the estimate from the loaded model."""
    import transformers

    from evalharness.memory import estimate_peak_bytes
    from evalharness.models import load

    folder = tmp_path / "ckpt"
    model, tokenizer, info = load("random:tiny", dtype="float32", device="cpu")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    expected = {length: estimate_peak_bytes(model.config, info.dtype, length, kv_cache=kv_cache,
                                            attn_impl=model.config._attn_implementation or "sdpa",
                                            n_params=sum(p.numel() for p in model.parameters()))["total"]
                for length, kv_cache in ((256, False), (131072, True))}

    def no_weights(*args, **kwargs):
        raise AssertionError("--dry-run read the weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    args = ["--model", str(folder), "--out", str(tmp_path / "out"), "--no-progress", "--tasks", "perplexity",
            "--dataset", f"local:{corpus}", "--lengths", "128,256", "--method", "base,yarn", "--dry-run"]
    assert cli.main(args) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "perplexity: 4 cells, 0 done, 4 to do, 1,024 tokens to process" in text
    assert f"{expected[256] / 2**30:.2f} GiB" in text
    # a passkey prompt at 128k: an estimate in the hundreds of MiB, from the meta model's shapes alone
    assert cli.main(args[:args.index("--tasks")] + ["--tasks", "passkey", "--lengths", "128k", "--depths", "1",
                                                     "--dry-run"]) == cli.EXIT_OK
    assert expected[131072] > 2**28 and f"{expected[131072] / 2**30:.2f} GiB" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="read the weights"):  # a real run does read them
        cli.main(args[:-1])


def test_layer_progress_ends_exactly_at_the_forward_tokens():
    """25 tokens over 6 layers: six float steps of 25/6 sum to more than 25 (tqdm then warns
    "clamping frac"); whole-number steps end exactly at 25, window after window."""
    import io
    import warnings

    import transformers

    from evalharness import progress

    assert sum([25 / 6] * 6) > 25  # the overshoot the integer split avoids
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=6,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(1, 97, (25,), generator=torch.Generator().manual_seed(0))
    counting = progress.CellProgress("cell 1/1", "bar", stream=io.StringIO())  # a tqdm bar (terminal mode)
    counting.stage("prefilled", 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with counting.layers(model):
            for done in (25, 50):
                perplexity.token_nll(model, ids)
                assert counting.count == counting.bar.n == done
        counting.close()
