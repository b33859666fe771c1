"""The package's registered tasks, one line each (see :mod:`tasks.registry` for the kinds).

A new task of the package is a module of its own plus one line here; a user's task is one
``tasks.register`` call in the user's code.
"""

from __future__ import annotations

from tasks import dynamical, image_tasks, lstm_copy, mixes, rnn_copy
from tasks.hpo import paper_tasks
from tasks.locomotion import policy_learning
from tasks.registry import register

# Unrolled systems whose theta is meta-trained directly.
register("toy2d", dynamical.toy2d)
register("influence_balancing", dynamical.influence_balancing)
register("lorenz", dynamical.lorenz)
register("rnn_copy", rnn_copy.rnn_copy)
register("lr_decay_schedule", paper_tasks.lr_decay_schedule)
register("many_hparams", paper_tasks.many_hparams)
register("swimmer", policy_learning.swimmer)
register("halfcheetah", policy_learning.halfcheetah)
register("hopper", policy_learning.hopper)
register("walker2d", policy_learning.walker2d)

# Inner tasks, trained by a learned optimizer.
register("fashion_mnist_mlp", image_tasks.fashion_mnist_mlp)
register("fashion_mnist_mlp28", image_tasks.fashion_mnist_mlp28)
register("digits_mlp", image_tasks.digits_mlp)
register("cifar10_resnet", image_tasks.cifar10_resnet)
register("image_mlp", image_tasks.image_mlp)
register("image_conv", image_tasks.image_conv)
register("image_autoencoder", image_tasks.image_autoencoder)
register("lstm_copy", lstm_copy.lstm_copy)

# Task distributions.
register("digits_mix", mixes.DIGITS_MIX)
register("small_mix", mixes.SMALL_MIX)
