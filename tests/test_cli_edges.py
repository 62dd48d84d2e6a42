"""Edges that used to pass through as raw errors, be ignored in silence or cost time: `--out` naming a file,
`@path` naming a folder, stdout on a full disk, options that another option makes meaningless, a bad
per-checkpoint guidance, and a stage that loaded again the checkpoint still in memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXP = 'prompt = "a {red|blue} castle"\nseeds = [1]\ncheckpoints = ["tiny"]\nsteps = 1\nwidth = 64\nheight = 64\n'


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("below", [False, True])
def test_run_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, below):
    (tmp_path / "e.toml").write_text(EXP)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("my notes")
    out = blocker / "run" if below else blocker
    r = invoke("run", tmp_path / "e.toml", "--out", out)
    assert r.exit_code == 2 and "Traceback" not in r.output and "EEXIST" not in r.output, r.output
    assert "a file, not a folder; give --out a folder" in r.output
    assert (f"lies under {blocker}" in r.output) == below
    assert blocker.read_text() == "my notes"


def test_merge_into_a_file_is_refused_without_claiming_a_partial_merge(tmp_path):
    (tmp_path / "e.toml").write_text(EXP)
    assert invoke("run", tmp_path / "e.toml", "--out", tmp_path / "shard").exit_code == 0
    (tmp_path / "merged").write_text("not a folder")
    r = invoke("merge", tmp_path / "shard", "--out", tmp_path / "merged")
    assert r.exit_code == 2 and "a file, not a folder" in r.output and "merged so far" not in r.output, r.output
    assert (tmp_path / "merged").read_text() == "not a folder"


@pytest.mark.parametrize("args", [["expand", "@{dir}"], ["mutate", "a red castle", "--template", "@{dir}"],
                                  ["mutate", "@{dir}"]])
def test_an_at_path_naming_a_folder_says_it_is_a_folder(tmp_path, args):
    r = invoke(*(a.format(dir=tmp_path) for a in args))
    assert r.exit_code == 2 and f"{tmp_path} is a folder; expected a text file" in r.output, r.output
    r = invoke(*(a.format(dir=tmp_path / "missing.txt") for a in args))
    assert r.exit_code == 2 and "template file not found" in r.output, r.output


@pytest.mark.parametrize("args", [["expand", "@{path}"], ["mutate", "@{path}"]])
def test_an_at_path_that_is_no_readable_text_file_is_one_line_naming_it(tmp_path, args):
    long = tmp_path / ("x" * 300)
    for path, said in (("/dev/null", "/dev/null is not a regular file (a device or a pipe); expected a text file"),
                       (long, f"{long} cannot be read: File name too long")):
        r = invoke(*(a.format(path=path) for a in args))
        assert r.exit_code == 2 and r.output.startswith(f"@{path}: {said}"), r.output


def test_grammars_naming_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "colors.txt").write_text("red\n")
    r = invoke("expand", "a cat", "--grammars", tmp_path / "colors.txt")
    assert r.exit_code == 2 and f"--grammars {tmp_path / 'colors.txt'}: a file, not a folder" in r.output, r.output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["expand", "{a|b|c}"], ["plan", "experiments/demo.toml"]])
def test_stdout_on_a_full_disk_is_one_line(command):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "harness", *command], stdout=full, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr  # (plan may first build the tiny model, with a progress bar)
    assert r.stderr.splitlines()[-1] == "error: writing the output: No space left on device (ENOSPC)"


@pytest.mark.parametrize("extra, named", [(["--sample", "1"], "--sample"), (["--limit", "1"], "--limit"),
                                          (["--format", "jsonl"], "--format"),
                                          (["--sample", "2", "--with-replacement"], "--sample, --with-replacement")])
def test_expand_count_refuses_options_it_would_ignore(extra, named):
    r = invoke("expand", "{a|b|c}", "--count", *extra)
    assert r.exit_code == 2 and f"which {named} would not change" in r.output, r.output
    assert invoke("expand", "{a|b|c}", "--count").output == "3\n"


def test_with_replacement_needs_sample():
    r = invoke("expand", "{a|b|c}", "--with-replacement")
    assert r.exit_code == 2 and "add --sample N" in r.output, r.output
    r = invoke("expand", "{a|b}", "--sample", "5", "--with-replacement", "--seed", "3")
    assert r.exit_code == 0 and len(r.output.splitlines()) == 5 and set(r.output.split()) <= {"a", "b"}


@pytest.mark.parametrize("layout, named", [(["--rows", "seed"], "--rows lay"),
                                           (["--rows", "seed", "--cols", "f.x"], "--rows and --cols lay")])
def test_report_no_html_refuses_sheet_layout(tmp_path, layout, named):
    r = invoke("report", tmp_path, "--no-html", *layout)
    assert r.exit_code == 2 and f"{named} out the contact sheet, which --no-html does not build" in r.output, r.output
    assert not (tmp_path / "tables").exists()


@pytest.mark.parametrize("value, shown", [("-1", "-1"), ("200", "200"), ("true", "True"), ('"x"', "'x'")])
def test_a_bad_checkpoint_guidance_beside_a_negative_prompt_is_named(tmp_path, value, shown):
    (tmp_path / "e.toml").write_text('prompt = "a cat"\nnegative_prompt = "blurry"\ncheckpoints = ["tiny"]\n'
                                     f'seeds = [1]\n[checkpoint.tiny]\nguidance = {value}\n')
    r = invoke("plan", tmp_path / "e.toml")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"key 'checkpoint.tiny.guidance': got {shown}, expected a number in [0, 100]" in r.output


def test_a_stage_goes_on_with_the_checkpoint_in_memory(tmp_path, monkeypatch):
    """Two checkpoints and one stage: the main pass loads A then B, the stage makes B's images first (still in
    memory) and loads A once more: three loads, not four."""
    import harness.pipelines as pipelines
    from harness.run import run_experiment

    loads = []
    real = pipelines.load_pipeline
    monkeypatch.setattr(pipelines, "load_pipeline", lambda ref, *a, **k: loads.append(ref.source) or real(ref, *a, **k))
    (tmp_path / "e.toml").write_text(
        'prompt = "a castle"\nseeds = [1]\ncheckpoints = ["tiny", "toy"]\nsteps = 2\nwidth = 64\nheight = 64\n'
        '[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\nstrengths = [0.5]\n')
    r = run_experiment(tmp_path / "e.toml", out=tmp_path / "run", progress=False)
    assert r.generated == 4
    assert len(loads) == 3 and loads[0] == loads[2] != loads[1], loads  # A, B; the stage: B (in memory), A


def test_a_nul_character_in_a_path_or_name_of_an_experiment_is_named_by_key(tmp_path):
    (tmp_path / "e.toml").write_text('prompt = "@a\\u0000.txt"\nbase_dir = "a\\u0000b"\ncheckpoints = ["tiny"]\n'
                                     'seeds = [1]\n[[stages]]\nname = "r"\nprompt = "__parent__, x\\u0000"\n'
                                     'strengths = [0.5]\n')
    r = invoke("plan", tmp_path / "e.toml")
    assert r.exit_code == 2 and "Traceback" not in r.output and "embedded null byte" not in r.output, r.output
    assert "key 'base_dir': holds a NUL character" in r.output and "key 'prompt': holds a NUL" in r.output
    assert "stages[0].prompt" not in r.output  # a prompt's own text may hold one (written U+FFFD in the infotext)


def test_eval_scale_with_an_unknown_metric_is_one_line(tmp_path):
    from harness.ledger import Ledger

    Ledger.open(tmp_path / "run").close()
    r = invoke("eval", tmp_path / "run", "-m", "bogus", "--scale", "2.5")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.startswith("error: unknown metric 'bogus'")


@pytest.mark.parametrize("command", ["compare", "ablate"])
def test_n_boot_past_a_million_is_refused_before_anything_runs(tmp_path, command):
    """A typo of a few digits used to reach the bootstrap (MemoryError), for ablate after making every image."""
    target = str(tmp_path / "run") if command == "compare" else "experiments/ablation.toml"
    extra = ["--factor", "color"] if command == "compare" else ["--out", str(tmp_path / "run")]
    r = invoke(command, target, *extra, "--n-boot", "99999999999")
    assert r.exit_code == 2 and "Invalid value for '--n-boot'" in r.output and "1000000" in r.output, r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signal_error, code, said", [(KeyboardInterrupt, 130, "interrupted"),
                                                      ("Terminated", 143, "terminated (SIGTERM)")])
def test_a_report_cut_off_or_out_of_space_says_what_became_of_its_files(tmp_path, monkeypatch, signal_error, code,
                                                                        said):
    import errno

    from harness import entry, report

    (tmp_path / "e.toml").write_text(EXP)
    assert invoke("run", tmp_path / "e.toml", "--out", tmp_path / "run").exit_code == 0
    stop = getattr(entry, signal_error) if isinstance(signal_error, str) else signal_error

    def cut_off(*args, **kwargs):
        raise stop()

    monkeypatch.setattr(report, "build_report", cut_off)
    r = invoke("report", tmp_path / "run")
    assert r.exit_code == code, r.output
    assert r.output.startswith(f"{said}: the report stopped part way: each file it wrote is whole, and the files "
                               "it did not get to are the earlier report's (or missing); run the same command again"), \
        r.output
    parquet = tmp_path / "run" / "tables" / "images.parquet"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(parquet))

    monkeypatch.setattr(report, "build_report", full)
    r = invoke("report", tmp_path / "run")
    assert r.exit_code == 2 and r.output.startswith(f"error: {parquet}: No space left on device (ENOSPC); the "
                                                    "report stopped part way"), r.output
    assert "images already finished" not in r.output


@pytest.mark.parametrize("signal_error, code", [(KeyboardInterrupt, 130), ("Terminated", 143)])
def test_a_signal_while_the_command_line_is_imported_is_one_line(monkeypatch, capsys, signal_error, code):
    """Ctrl-C (or SIGTERM) in the first fraction of a second, before the command began."""
    import sys

    from harness import entry

    stop = getattr(entry, signal_error) if isinstance(signal_error, str) else signal_error

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "harness.cli":
                raise stop()

    monkeypatch.delitem(sys.modules, "harness.cli")
    monkeypatch.delattr(sys.modules["harness"], "cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    import signal

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            entry.main()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.code == code
    assert capsys.readouterr().err == "interrupted before the command began; nothing was done\n"


@pytest.mark.parametrize("command, option", [("run", "--device"), ("evolve", "--device"), ("ablate", "--device"),
                                             ("compare", "--metric"), ("report", "--metric")])
def test_an_empty_device_or_metric_is_refused_not_read_as_the_default(tmp_path, command, option):
    target = {"run": "experiments/demo.toml", "evolve": "experiments/search.toml",
              "ablate": "experiments/ablation.toml"}.get(command, str(tmp_path / "run"))
    extra = ["--factor", "color"] if command == "compare" else [] if command == "report" else \
        ["--out", str(tmp_path / "run")]
    r = invoke(command, target, *extra, option, " ")
    assert r.exit_code == 2 and f"Invalid value for '{option}': empty; expected" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_a_shard_count_past_a_million_is_refused(tmp_path):
    r = invoke("run", "experiments/demo.toml", "--out", tmp_path / "run", "--shard", "0/99999999999999999999")
    assert r.exit_code == 2 and "expected at most 1,000,000 shards" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_plan_out_refuses_the_folders_run_out_refuses(tmp_path):
    """`plan --out` is a dry run of `run --out`: a file, or a folder of someone's files, is refused by both."""
    (tmp_path / "afile").write_text("notes")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "index.html").write_text("my page")
    for out, said in ((tmp_path / "afile", "the run folder is a file, not a folder"),
                      (tmp_path / "mine", "is not a run folder (no ledger.sqlite) and holds files (index.html)")):
        for command in ("plan", "run"):
            r = invoke(command, "experiments/search.toml", "--out", out)
            assert r.exit_code == 2 and said in r.output, (command, r.output)
    assert (tmp_path / "afile").read_text() == "notes" and os.listdir(tmp_path / "mine") == ["index.html"]
