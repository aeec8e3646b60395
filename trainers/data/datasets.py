"""The data sets of this project, one record each (see :class:`trainers.data.spec.DatasetSpec`).

Training caps ``max_eps`` and the evaluation radii are the paper's (docs/method.md); ``eps_cap`` is
the largest radius certification searches, fixed per data set so that ACR is comparable across
trials whatever radius each trial trained with.
"""

from __future__ import annotations

from trainers.data.loaders import load_cifar10, load_tinyimagenet, mnist_like
from trainers.data.spec import DatasetSpec, register_dataset
from trainers.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_SHAPE,
    load_synthetic,
    load_synthetic_tradeoff,
)

register_dataset(
    DatasetSpec(
        "mnist",
        10,
        (1, 28, 28),
        (0.1307,),
        (0.3081,),
        loader=mnist_like("MNIST", "mnist"),
        default_model="cnn7",  # CNN7 with BatchNorm, as published (Shi et al. 2021; docs/method.md)
        max_eps=0.4,
        eps_cap=0.5,
        cert_eps=(0.1, 0.3),
    )
)
register_dataset(
    DatasetSpec(
        "fashion-mnist",
        10,
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
        loader=mnist_like("FashionMNIST", "fashion-mnist"),
        default_model="cnn_small",
        max_eps=0.1,
        eps_cap=0.2,
        cert_eps=(0.05, 0.1),
    )
)
register_dataset(
    DatasetSpec(
        "cifar10",
        10,
        (3, 32, 32),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        loader=load_cifar10,
        default_model="cnn7",
        max_eps=8.8 / 255,
        eps_cap=16 / 255,
        cert_eps=(2 / 255, 8 / 255),
        augment=True,
    )
)
register_dataset(
    DatasetSpec(
        "tinyimagenet",
        200,
        (3, 64, 64),
        (0.4802, 0.4481, 0.3975),
        (0.2302, 0.2265, 0.2262),
        loader=load_tinyimagenet,
        default_model="cnn7",
        max_eps=1 / 255,
        eps_cap=4 / 255,
        cert_eps=(1 / 255,),
        augment=True,
    )
)
register_dataset(
    DatasetSpec(
        "synthetic",
        SYNTHETIC_CLASSES,
        SYNTHETIC_SHAPE,
        (0.5,),
        (0.5,),
        loader=load_synthetic,
        default_model="mlp_tiny",
        max_eps=0.1,
        eps_cap=0.2,
        cert_eps=(0.05, 0.1),
    )
)
register_dataset(
    DatasetSpec(
        "synthetic-tradeoff",
        SYNTHETIC_CLASSES,
        SYNTHETIC_SHAPE,
        (0.5,),
        (0.5,),
        loader=load_synthetic_tradeoff,
        default_model="mlp_tiny",
        max_eps=0.1,
        eps_cap=0.2,
        cert_eps=(0.05, 0.1),
    )
)
