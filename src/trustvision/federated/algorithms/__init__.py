"""Every federated algorithm, one module each; importing this package registers them all."""

from trustvision.federated.algorithms import (  # noqa: F401  (registers the algorithms)
    ditto,
    fedavg,
    fedbabu,
    fedetf,
    fedlc,
    fedloge,
    fedper,
    fedprox,
    fedrep,
    fedrod,
)
