"""NRES at the authors' HalfCheetah setting for 40 updates, then diagnose() at theta0, there, and
at theta = 0 (standing still)."""
import json, jax, jax.numpy as jnp
import tasks
from benchmarks.policy_learning import diagnose
from meta_train.engine import estimators
from meta_train.engine.trainer import Trainer, outer_optimizer
system = tasks.get("halfcheetah", policy_seed=0)
est = estimators.make("nres", system, num_particles=600, sigma=0.004, unroll_length=20)
trainer = Trainer(est, outer_optimizer("sgd", 3e-5))
state = trainer.init(jax.random.key(0), system.theta0)
state, m = trainer.run(state, 40)
out = {}
for name, th in [("theta0", system.theta0), ("nres_40_updates", state.theta),
                 ("zero", jax.tree.map(jnp.zeros_like, system.theta0))]:
  out[name] = diagnose("halfcheetah", th, 0.004, 300)
  print(name, out[name], flush=True)
print(json.dumps(out))
