"""The ray executor on a local Ray cluster: same keys and images as the local executor."""

import numpy as np
import pytest
from PIL import Image

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

    r = run_experiment(exp, out=tmp_path / "ray", progress=False, executor="ray",
                       executor_options=dict(workers=2, on_batch_done=kill_one))
    assert killed and local.generated == r.generated + 0 == 36
    with Ledger.open(tmp_path / "ray", readonly=True) as led:
        frame = led.jobs_frame()
    assert len(frame) == 36 and frame["key"].is_unique and set(frame["status"]) == {"done"}
    a, b = images(tmp_path / "local"), images(tmp_path / "ray")
    assert a.keys() == b.keys()
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1
    again = run_experiment(exp, out=tmp_path / "ray", progress=False, executor="ray",
                           executor_options=dict(workers=2))
    assert again.generated == 0 and again.already_done == 36
