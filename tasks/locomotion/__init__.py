"""MuJoCo policy learning: the environments, their physics in JAX or MuJoCo, and the systems.

* :mod:`.environments`: the gymnasium MuJoCo environments this package runs (Swimmer, HalfCheetah,
  Hopper, Walker2d): their models, rewards and settings (:class:`Locomotion`), read from
  gymnasium's own files;
* :mod:`.physics`: where a MuJoCo step happens: MJX (``mujoco.mjx``, jit-able, any device) or
  MuJoCo's C library through a host callback, one ``step(model, data, action)`` for both;
* :mod:`.policy_learning`: the unrolled system whose theta is a policy's weights
  (:func:`policy_system`, registered as ``swimmer``, ``halfcheetah``, ...).

MuJoCo and gymnasium are the ``rl`` extra: importing this package needs neither; building a
system does.
"""
