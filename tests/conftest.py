import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tests check what programs compute, not how fast: XLA's backend (LLVM) optimizes them at its
# lowest level, which compiles about twice as fast (this suite is mostly compilation; the same
# XLA graph passes still run), and fusions are emitted by XLA:CPU's older loop emitters, which
# compile in about half the time of the fusion emitters (the same runtime, thread pool and
# custom calls). Benchmarks run with XLA's defaults. Set in the environment, so the subprocesses
# the tests start inherit them; a setting chosen by the user is kept.
for _flag, _value in (("xla_backend_optimization_level", "0"),
                      ("xla_cpu_use_fusion_emitters", "false")):
  if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_flag}={_value}".strip()

# Compiling dominates this suite's time, and many tests (and the `meta-train` subprocesses they
# start) compile the very same programs. A compilation cache for this session only, in a fresh
# folder removed at the end (so every run starts cold, as CI does, and nothing leaks between
# runs), lets each program compile once. Set through the environment before jax is imported, so
# the subprocesses share it. A cache set by the user (JAX_COMPILATION_CACHE_DIR) is left alone.
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="lopt-meta-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _SESSION_CACHE is not None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
