"""Several processes, one run: real two-process runs on 127.0.0.1 (2 CPU devices each, gloo).

Every test starts its processes as subprocesses with bounded timeouts on free ports, and kills
whatever is still running when it ends. The single-process references run on 4 CPU devices, the
two processes' global mesh.

The quick tier (``-m "not slow"``) keeps a two-process estimate equal to the four-device one, a
two-process run that loses a process and resumes, and every refusal; the ``slow`` tests add an
exact stop and resume over two processes, the coordinator's death and a task distribution.
"""

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lopt_meta import ConfigError
from meta_train.command import distributed
from tests import processes

TIMEOUT_S = 180
TOY = ["--task", "toy2d", "--num-particles", "8", "--unroll-length", "5", "--eval-every", "0",
       "--wandb", "disabled"]


class Processes:
  """Two (or one) processes of one run; ``wait`` collects them, ``close`` kills what is left."""

  def __init__(self, argvs: list[list[str]], devices: int, logs: Path):
    self.procs, self.files = [], []
    logs.mkdir(parents=True, exist_ok=True)
    for i, argv in enumerate(argvs):
      out, err = open(logs / f"{i}.out", "w+"), open(logs / f"{i}.err", "w+")
      self.files.append((out, err))
      self.procs.append(subprocess.Popen(argv, stdout=out, stderr=err, env=processes.local_cpu_env(devices, PYTHONUNBUFFERED="1"),
                                         cwd=Path(__file__).parents[1]))

  def wait(self, timeout: float = TIMEOUT_S) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    results = []
    for p, (out, err) in zip(self.procs, self.files):
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
      out.seek(0), err.seek(0)
      results.append((p.returncode, out.read(), err.read()))
    return results

  def close(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
    for out, err in self.files:
      out.close(), err.close()


def meta_train(*args: str) -> list[str]:
  return [sys.executable, "-m", "meta_train", *args]


def two(args: list[str], logs: Path, port: int | None = None, extra=(("", ""),) * 2) -> Processes:
  port = port or processes.free_local_port()
  return Processes([meta_train(*args, "--coordinator-address", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i),
                               *[x for x in extra[i] if x])
                    for i in range(2)], devices=2, logs=logs)


def run_to_end(procs: Processes, timeout: float = TIMEOUT_S):
  try:
    results = procs.wait(timeout)
  finally:
    procs.close()
  return results


def records(run_dir: Path) -> list[dict]:
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def theta_at(run_dir: Path, step: int):
  return [r["theta"] for r in records(run_dir) if r.get("step") == step][-1]


ESTIMATE = textwrap.dedent("""
    import json, sys
    from meta_train.command import distributed
    if len(sys.argv) > 1:
        distributed.initialize(distributed.Distributed(
            coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])))
    import jax, numpy as np, tasks
    from meta_train.estimators import NRES
    system = tasks.get("lorenz", horizon=60, init_sigma=0.5)
    est = NRES(system, num_particles=16, sigma=0.04, unroll_length=10)
    ws = est.init(jax.random.key(0), system.theta0)
    grads = []
    for i in range(3):
        g, ws, _ = est.estimate(jax.random.key(i), system.theta0, ws)
        grads.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(distributed.to_host(g))]).tolist())
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                      "shards": len(ws.t.sharding.device_set), "grads": grads}))
""")


def test_two_processes_give_the_four_device_estimate(tmp_path):
  port = processes.free_local_port()
  procs = Processes([[sys.executable, "-c", ESTIMATE, f"127.0.0.1:{port}", str(i)]
                     for i in range(2)], devices=2, logs=tmp_path / "two")
  reference = Processes([[sys.executable, "-c", ESTIMATE]], devices=4, logs=tmp_path / "one")
  results = run_to_end(procs) + run_to_end(reference)
  for rc, out, err in results:
    assert rc == 0, err[-3000:]
  outs = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
  for o in outs:
    assert o["devices"] == 4 and o["shards"] == 4
  assert [o["processes"] for o in outs] == [2, 2, 1]
  import numpy as np
  a0, a1, ref = (np.asarray(o["grads"]) for o in outs)
  np.testing.assert_array_equal(a0, a1)  # every process holds the same (replicated) estimate
  np.testing.assert_allclose(a0, ref, rtol=1e-5, atol=1e-7)  # float summation order at most


@pytest.mark.slow
def test_two_process_run_stops_and_resumes_exactly(tmp_path):
  """One metrics file and one checkpoint series; SIGTERM to both stops them at one agreed step
  (each may see its signal at a different chunk); resuming with two processes ends bitwise where an uninterrupted two-process
  run ends (and a one-process run, up to float summation order); a different number of processes
  is refused before compute."""
  run, ref = tmp_path / "run", tmp_path / "ref"  # stopped and resumed; uninterrupted
  args = ["train", *TOY, "--outer-steps", "120", "--log-every", "1", "--checkpoint-every", "20",
          "--keep-checkpoints", "10", "--eval-every", "40"]
  procs = two(args + ["--out", str(run)], tmp_path / "logs1")
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not ((run / "metrics.jsonl").exists() and '"step": 3,' in
               (run / "metrics.jsonl").read_text()):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs.procs)
      time.sleep(0.2)
    assert json.loads((run / "run.lock").read_text())["pid"] == procs.procs[0].pid  # one lock
    procs.procs[1].send_signal(signal.SIGTERM)  # (a signal after the stop would find the
    procs.procs[0].send_signal(signal.SIGTERM)  # default handlers back: send both at once)
    results = procs.wait()
  finally:
    procs.close()
  assert [rc for rc, _, _ in results] == [143, 143], [err[-2000:] for _, _, err in results]
  steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
  stopped = max(steps)
  assert 3 <= stopped < 120
  assert "stopped at outer step" in results[0][2]

  # one process cannot resume what two saved: one clear error, nothing changed
  single = Processes([meta_train("resume", str(run))], devices=4, logs=tmp_path / "logs2")
  [(rc, _, err)] = run_to_end(single)
  assert rc == 2, err[-2000:]
  assert err.strip().splitlines()[-1] == (
      f"meta-train: error: num_processes: checkpoint {stopped} of {run} was saved by 2 "
      "process(es); resume it with --num-processes 2 (this session has 1)")
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == steps

  results = run_to_end(two(["resume", str(run)], tmp_path / "logs3"))
  assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
  progress = re.compile(r"^step \d+/120:", re.M)
  assert progress.search(results[0][2]) and not progress.search(results[1][2])  # process 0 only
  results = run_to_end(two(args + ["--out", str(ref)], tmp_path / "logs4"))  # uninterrupted
  assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
  assert theta_at(run, 120) == theta_at(ref, 120)  # bitwise: the JSON floats are exact
  evals = [(r["step"], r["eval_loss"]) for r in records(run) if "eval_loss" in r]
  assert [s for s, _ in evals] == [0, 40, 80, 120]
  assert evals == [(r["step"], r["eval_loss"]) for r in records(ref) if "eval_loss" in r]
  one = tmp_path / "one"  # one process on the same 4 devices: the same up to summation order
  [(rc, _, err)] = run_to_end(Processes([meta_train(*args, "--out", str(one))], devices=4,
                                        logs=tmp_path / "logs5"))
  assert rc == 0, err[-2000:]
  assert theta_at(run, 120) == pytest.approx(theta_at(one, 120), rel=1e-4)
  logged = [r["step"] for r in records(run) if "step" in r and "event" not in r]
  assert logged == sorted(set(logged)) and logged[-1] == 120  # one writer: each step once
  assert [r["event"] for r in records(run) if "event" in r] == ["interrupted", "resume"]
  assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl"]


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_killing_one_process_ends_the_other_and_the_run_resumes(tmp_path, victim):
  """Process 1 killed: process 0 says which process was lost and where to resume. Process 0 (the
  coordinator) killed: process 1 ends at once (JAX's runtime or the pulse, with its message)."""
  run, other = tmp_path / "run", 1 - victim
  procs = two(["train", *TOY, "--outer-steps", "100000", "--log-every", "5",
               "--checkpoint-every", "20", "--out", str(run), "--heartbeat-timeout-s", "5"],
              tmp_path / "logs1")
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not ((run / "checkpoints" / "20").is_dir() and '"step": 25,' in
               (run / "metrics.jsonl").read_text()):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs.procs)
      time.sleep(0.2)
    procs.procs[victim].kill()
    killed_at = time.monotonic()
    procs.procs[other].wait(timeout=60)
    took = time.monotonic() - killed_at
    rc, _, err = procs.wait()[other]
  finally:
    procs.close()
  assert rc != 0 and took < 60
  if victim == 0:  # whichever notices first: JAX's runtime, or the pulse
    assert ("Terminating process because the JAX distributed service detected fatal errors" in err
            or "meta-train: error: the run's coordinator (process 0) no longer answers" in err), err
    return
  ours = re.search(r"meta-train: error: process 1 of 2 has not answered for \d+ s \(it died, was "
                   r"killed, or is stuck\); stopping process 0 too \(exit status 3\); the last "
                   r"complete checkpoint is step (\d+); continue with 'meta-train resume", err)
  # a collective that fails first ends the process through JAX's own message
  assert ours or "another task died" in err or "stopped sending heartbeats" in err, err[-3000:]
  last = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  results = run_to_end(two(["resume", str(run), "--outer-steps", str(last + 5)],
                           tmp_path / "logs2"))
  assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
  assert f"resuming {run} at outer step {last} -> {last + 5}" in results[0][1]


DISTRIBUTION = """
task:
  task: two_structures
  distribution:
    members:
      - {task: image_mlp, dataset: digits, hidden_sizes: [8], batch_size: 16, horizon: 20}
      - {task: image_conv, dataset: digits, channels: [4], batch_size: 8, horizon: 15}
    tasks_per_step: 2
estimator: {estimator: nres, num_particles: 8, sigma: 0.01, unroll_length: 5}
outer: {outer_lr: 0.001}
run: {eval_every: 0, log_every: 4, checkpoint_every: 4, wandb: disabled}
"""


@pytest.mark.slow
def test_a_task_distribution_runs_over_two_processes_as_over_one(tmp_path):
  """A distribution's workers (an MLP's and a CNN's) are split over 2 processes x 2 devices;
  stopped at step 4 and resumed to 8, its theta is a one-process run's on the same 4 devices up
  to float summation order (that run's 8 steps in one chunk: one compilation of its program).
  Each start compiles both members' programs: minutes on 2 busy cores, hence the longer limit."""
  config = tmp_path / "dist.yaml"
  config.write_text(DISTRIBUTION)
  run, one = tmp_path / "run", tmp_path / "one"
  args = ["train", "--config", str(config)]
  limit = 3 * TIMEOUT_S
  results = run_to_end(two(args + ["--outer-steps", "4", "--out", str(run)], tmp_path / "l1"),
                       limit)
  assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
  results = run_to_end(two(["resume", str(run), "--outer-steps", "8"], tmp_path / "l2"), limit)
  assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
  [(rc, _, err)] = run_to_end(Processes([meta_train(*args, "--outer-steps", "8", "--log-every",
                                                    "8", "--checkpoint-every", "8", "--out",
                                                    str(one))], devices=4, logs=tmp_path / "l3"),
                              limit)
  assert rc == 0, err[-2000:]
  import jax
  import numpy as np
  from meta_train.command import run as run_lib
  a, b = run_lib.load_run(run).theta, run_lib.load_run(one).theta
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_bad_input_ends_with_one_clear_error(tmp_path):
  # nobody at the coordinator's address: a clear error after --init-timeout-s
  start = time.monotonic()
  lonely = Processes([meta_train("train", *TOY, "--out", str(tmp_path / "a"),
                                 "--coordinator-address", f"127.0.0.1:{processes.free_local_port()}",
                                 "--num-processes", "2", "--process-id", "1",
                                 "--init-timeout-s", "3")], devices=2, logs=tmp_path / "l1")
  [(rc, _, err)] = run_to_end(lonely, timeout=60)
  assert rc == 2 and time.monotonic() - start < 60
  assert re.search(r"^meta-train: error: coordinator_address: no coordinator answered at "
                   r"127\.0\.0\.1:\d+ within 3 s", err.strip().splitlines()[-1]), err[-2000:]
  assert not (tmp_path / "a").exists()

  # process 0's port taken by another program
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    busy = Processes([meta_train("train", *TOY, "--out", str(tmp_path / "c"),
                                 "--coordinator-address", f"127.0.0.1:{port}",
                                 "--num-processes", "2", "--process-id", "0")],
                     devices=2, logs=tmp_path / "l3")
    [(rc, _, err)] = run_to_end(busy, timeout=60)
  assert rc == 2, err[-2000:]
  assert err.strip().splitlines()[-1] == (
      f"meta-train: error: coordinator_address: process 0 cannot listen on port {port} of "
      f"127.0.0.1:{port} (Address already in use); choose a free port")

  # processes started with different settings: every process stops with the same error
  results = run_to_end(two(["train", *TOY, "--outer-steps", "5", "--out", str(tmp_path / "b")],
                           tmp_path / "l2", extra=(("--seed", "0"), ("--seed", "1"))))
  for rc, _, err in results:
    assert rc == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "meta-train: error: seed: process 1 was started with a different configuration than "
        "process 0 (differs in: seed); start every process with the same settings")


@pytest.mark.parametrize("settings, message", [
    (distributed.Distributed(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2),
     r"^process_id: must be one of 0\.\.1 \(--num-processes 2\); got 2$"),
    (distributed.Distributed(num_processes=2),
     r"^coordinator_address: several processes need --coordinator-address HOST:PORT, "
     r"--num-processes N and --process-id I together; missing: --coordinator-address, "
     r"--process-id$"),
    (distributed.Distributed(coordinator_address="localhost", num_processes=2, process_id=0),
     r"^coordinator_address: must be HOST:PORT with a port in 1\.\.65535"),
    (distributed.Distributed(coordinator_address="h:1", num_processes=0, process_id=0),
     r"^num_processes: must be a positive int; got 0$"),
    (distributed.Distributed(coordinator_address="auto", num_processes=2),
     r"^coordinator_address: 'auto' takes the number of processes and this process's id from "
     r"the cluster; leave out --num-processes and --process-id$"),
    (distributed.Distributed(heartbeat_timeout_s=0),
     r"^heartbeat_timeout_s: must be a positive int \(seconds\); got 0$"),
])
def test_settings_are_checked_before_anything_starts(settings, message):
  with pytest.raises(ConfigError, match=message):
    distributed.initialize(settings)


def test_a_plain_run_is_never_joined_to_anything(monkeypatch):
  for variables in distributed.CLUSTER_VARIABLES.values():
    for variable in variables:
      monkeypatch.delenv(variable, raising=False)
  assert distributed.initialize(distributed.Distributed()) is False
  for variable, value in (("SLURM_NTASKS", "1"), ("SLURM_JOB_ID", "7"),
                          ("SLURM_STEP_NODELIST", "node1"), ("SLURM_PROCID", "0"),
                          ("SLURM_LOCALID", "0")):
    monkeypatch.setenv(variable, value)
  assert distributed.settings.cluster_processes() == 1  # a one-task SLURM job is a plain run
  assert distributed.initialize(distributed.Distributed()) is False
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert distributed.settings.cluster_processes() == 2  # two tasks: initialize would join them
  monkeypatch.delenv("SLURM_STEP_NODELIST")  # salloc without srun: not what JAX detects
  assert distributed.settings.cluster_processes() == 1
