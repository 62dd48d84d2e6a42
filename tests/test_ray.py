"""The ray executor on a local Ray cluster: same keys and images as the local executor."""

import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.ledger import Ledger
from harness.run import run_experiment

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'harness[ray]')")

EXP = """
name = "rayed"
prompt = "a {red|blue} {cat|dog|fox}"
seeds = [1, 2, 3]
checkpoints = ["tiny"]
mode = ["txt2img", "img2img"]
init_images = "init.png"
strengths = [0.5]
steps = 2
width = 64
height = 64
batch_size = 2
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def experiment(tmp_path):
    Image.new("RGB", (64, 64), (20, 120, 200)).save(tmp_path / "init.png")
    (tmp_path / "exp.toml").write_text(EXP)
    return tmp_path / "exp.toml"


def images(run):
    return {p.stem: np.asarray(Image.open(p), dtype=np.int16) for p in (run / "images").glob("*.png")}


@pytest.mark.slow  # starts a Ray cluster (~40 s); run with -m slow
def test_ray_run_matches_local_run_and_survives_a_killed_worker(tmp_path, cluster):
    exp = experiment(tmp_path)
    local = run_experiment(exp, out=tmp_path / "local", progress=False)
    killed = []

    def kill_one(actors, result):
        if not killed:
            killed.append(actors[0])
            ray.kill(actors[0], no_restart=True)

    lines = []
    r = run_experiment(exp, out=tmp_path / "ray", progress=False, executor="ray", log=lines.append,
                       executor_options=dict(workers=2, on_batch_done=kill_one))
    assert killed and local.generated == r.generated + 0 == 36
    assert "generated 36/36" in "\n".join(lines)  # the same progress lines as a local run
    with Ledger.open(tmp_path / "ray", readonly=True) as led:
        frame = led.jobs_frame()
    assert len(frame) == 36 and frame["key"].is_unique and set(frame["status"]) == {"done"}
    a, b = images(tmp_path / "local"), images(tmp_path / "ray")
    assert a.keys() == b.keys()
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1
    again = run_experiment(exp, out=tmp_path / "ray", progress=False, executor="ray",
                           executor_options=dict(workers=2))
    assert again.generated == 0 and again.already_done == 36


SMALL = """
name = "small"
prompt = "a {red|blue} {cat|dog}"
seeds = [1, 2]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64
batch_size = 2
"""


def small(tmp_path, extra=""):
    (tmp_path / "small.toml").write_text(SMALL + extra)
    return tmp_path / "small.toml"


def one_line_error(result, *words):
    """The CLI's one-line error (exit 2, no traceback, no retries) holding every word."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and "retrying" not in result.output, result.output
    (line,) = [ln for ln in result.output.splitlines() if all(w in ln for w in words)]
    return line


@pytest.mark.parametrize("args, extra, words", [
    (["--device", "bogus"], "", ["(--device)", "device='bogus': expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"]),
    (["--device", "cuda"], "", ["(--device)", "device='cuda' needs GPUs on the Ray workers", "--gpus-per-worker"]),
    (["--device", "cuda", "--gpus-per-worker", "0"], "", ["(--device)", "--gpus-per-worker"]),
    (["--device", "cuda:2", "--gpus-per-worker", "1"], "", ["(--device)", "cuda:0..cuda:0"]),
    ([], 'dtype = "fp16"\n', ["(its device, dtype and memory keys)", "dtype='fp16' on device 'cpu'"]),
])
def test_ray_settings_the_driver_can_check_are_refused_before_the_run_folder_is_made(tmp_path, args, extra, words):
    """Workers without GPUs (the default) use the CPU, whatever the driver has."""
    exp = small(tmp_path, extra)
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run"), "--executor", "ray",
                                      "--workers", "1", *args])
    one_line_error(result, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:1", ["--address 127.0.0.1:1: no Ray cluster answered there within 10 s", "`ray status`"]),
    ("head-node", ["--address 'head-node': expected HOST:PORT of a Ray cluster's head"]),
    ("ray://10.0.0.5:port", ["expected HOST:PORT", "ray://HOST:PORT for Ray Client"]),
])
def test_a_ray_address_where_no_cluster_answers_fails_at_once_before_the_run_folder_is_made(tmp_path, address,
                                                                                          words):
    """Ray itself retries an unreachable head for many minutes, holding the run folder's lock."""
    import time

    exp = small(tmp_path)
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run"), "--executor", "ray",
                                      "--address", address])
    one_line_error(result, *words)
    assert time.perf_counter() - t0 < 15 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, named", [
    (["--workers", "3"], "--workers: this option needs --executor ray"),
    (["--address", "auto"], "--address: this option needs --executor ray"),
    (["--gpus-per-worker", "1", "--workers", "2"], "--workers, --gpus-per-worker: these options need --executor ray"),
    (["--executor", "local", "--gpus-per-worker", "0"], "--gpus-per-worker: this option needs --executor ray"),
])
def test_ray_options_with_the_local_executor_are_refused(tmp_path, args, named):
    exp = small(tmp_path)
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run"), *args])
    one_line_error(result, named)
    assert not (tmp_path / "run").exists()


def test_executor_options_for_the_local_executor_are_refused_in_python_too(tmp_path):
    from harness.core import SettingsError

    with pytest.raises(SettingsError, match=r"executor options workers need executor 'ray'"):
        run_experiment(small(tmp_path), out=tmp_path / "run", progress=False, executor_options=dict(workers=3))
    assert not (tmp_path / "run").exists()


def test_the_throughput_script_without_ray_says_how_to_install_it(monkeypatch, capsys):
    from harness.executors import throughput

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(SystemExit) as exit_:
        throughput.main([])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "pip install 'harness[ray]'" in err and "Traceback" not in err


@pytest.mark.slow  # uses the Ray cluster
def test_a_worker_that_cannot_set_up_fails_the_run_at_once_with_its_message(tmp_path, cluster):
    """A device string the driver accepts but no worker has (Apple MPS on Linux) is each worker's setup
    error: the run stops at the first batch with that error's line, not after retrying it as a crash."""
    import torch

    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has Apple MPS")
    exp = small(tmp_path)
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run"), "--executor", "ray",
                                      "--workers", "2", "--device", "mps"])
    line = one_line_error(result, "a Ray worker on", "could not set up")
    assert line.endswith("device='mps': Apple MPS is not available here; use 'auto' or 'cpu'")


@pytest.mark.slow  # uses the Ray cluster
def test_a_batch_that_raises_keeps_the_batches_other_workers_finished(tmp_path, cluster):
    """One worker's batches raise (their init image is gone) while the other's txt2img batches are still
    generating: those are recorded before the error propagates, so a resumed run does not make them again."""
    from harness.experiment import load_experiment
    from harness.plan import make_plan
    from harness.run import RunResult, generate_jobs, prepare_run

    Image.new("RGB", (64, 64), (20, 120, 200)).save(tmp_path / "init.png")
    # 4 txt2img and 4 img2img jobs in batches of 2: each worker gets one mode's two batches; the txt2img
    # ones take 25 steps, the img2img ones fail as soon as the model is loaded
    (tmp_path / "mixed.toml").write_text(EXP.replace('seeds = [1, 2, 3]', 'seeds = [1]')
                                         .replace('"a {red|blue} {cat|dog|fox}"', '"a {red|blue} {cat|dog}"')
                                         .replace("steps = 2", "steps = 25"))
    exp = load_experiment(tmp_path / "mixed.toml")
    plan = make_plan(exp)
    ledger, pending = prepare_run(exp, plan, tmp_path / "run")
    (tmp_path / "init.png").unlink()  # every img2img batch now raises on its worker
    result = RunResult(tmp_path / "run", len(pending), 0)
    try:
        with pytest.raises(FileNotFoundError, match=r"^init image .*init.png' does not exist$") as raised:
            generate_jobs(exp, plan, ledger, pending, result, exact=False, device="cpu", batch_size=None,
                          log=lambda message: None, progress=False, executor="ray",
                          executor_options=dict(workers=2))
        assert not isinstance(raised.value, ray.exceptions.RayTaskError)  # the worker's own error, one line
        txt2img = {j.key for j in pending if j.mode == "txt2img"}
        assert len(pending) == 8 and len(txt2img) == 4
        assert ledger.done_keys() == txt2img and result.generated == 4
    finally:
        ledger.close()
