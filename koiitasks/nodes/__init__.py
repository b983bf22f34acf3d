"""Nodes: what a node does with a request (``runtime``), and pools that reach many nodes.

A :class:`~koiitasks.nodes.base.NodePool` is the transport seam, as httpx's transports are: the
round engine hands it signed requests and gets raw reply bytes back, which it checks exactly as
it would check bytes from a stranger on the network. ``sim`` runs simulated nodes in-process
(with adversaries); ``http`` reaches ``koiitasks node serve`` processes, whose ``server`` (the
HTTP app) and ``host`` (the checks every call passes) speak the ``wire`` protocol.
"""

from koiitasks.nodes.base import NodePool, Reply

__all__ = ["NodePool", "Reply"]
