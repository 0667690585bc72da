"""Real peers: identity, the wire format, the receiver's checks and the gRPC transport.

This package holds a real peer: the runtime that runs a simulation's per-node rules with a
batch of one node, and what it needs below the algorithm. The runtime (imported from its
modules, as it loads torch):

* :mod:`~murmura.net.peer`: :class:`~murmura.net.peer.PeerSimulation`, the engine holding
  one node, whose gossip, robust aggregation and server sums go over the network;
* :mod:`~murmura.net.mesh`: :class:`~murmura.net.mesh.Mesh`, send and wait with a deadline
  and a quorum, from the engine's synchronous code;
* :mod:`~murmura.net.node`: one peer process (``murmura node``), the server of a star;
* :mod:`~murmura.net.launch`: N local peers (``murmura launch``), gathered into one run;
* :mod:`~murmura.net.commands`: the ``keygen``, ``node`` and ``launch`` commands.

Below it, one module per concept:

* :mod:`~murmura.net.identity`: :class:`Identity` (an Ed25519 signing key, a TLS key and
  self-signed certificate), :func:`generate` (``murmura keygen``), the peers file
  (:func:`load_peers` -> :class:`Peers` of :class:`Peer`), :func:`write_peers`;
* :mod:`~murmura.net.wire`: :class:`Envelope`, frames (:func:`encode_frame`,
  :func:`decode_frame`), Ed25519 signing, :class:`Sealer` (the sending side);
* :mod:`~murmura.net.tensors`: named tensors as a header plus raw little-endian bytes;
* :mod:`~murmura.net.chunks`: a frame as chunks with their own SHA-256, :class:`Reassembler`;
* :mod:`~murmura.net.limits`: :class:`Limits` (message, tensor and chunk sizes);
* :mod:`~murmura.net.errors`: :class:`WireError`, the one exception of the receive path, and
  :data:`REASONS`, the refusal reasons (one counter each);
* :mod:`~murmura.net.guard`: :class:`Guard` (the receiver's checks, in order), its
  :class:`Counters`, equivocation :class:`Evidence`;
* :mod:`~murmura.net.transport`: :class:`Server` and :class:`Client` over ``grpc.aio``,
  mutual TLS with pinned certificates, :class:`Delivery`.

A round trip, sender to receiver (see :mod:`~murmura.net.transport` for one over gRPC):

>>> import numpy as np
>>> from murmura.net import Guard, Identity, Sealer, peers_from
>>> a, b = Identity.create("a"), Identity.create("b")
>>> peers = peers_from({"peer": [a.entry("10.0.0.1:7000"), b.entry("10.0.0.2:7000")]})
>>> frame = Sealer("a", "run", a.signing_key).seal("b", 0, "model", {"w": np.ones(3, "f4")})
>>> guard = Guard("b", "run", peers)
>>> guard.admit(frame, tls_id="a").tensors["w"].tolist()
[1.0, 1.0, 1.0]
"""

from murmura.net.chunks import Reassembler, split
from murmura.net.errors import REASONS, WireError
from murmura.net.guard import (
    Counters,
    Evidence,
    Guard,
    Message,
    RateLimit,
    Refused,
    SignedEnvelope,
    TensorSpec,
)
from murmura.net.identity import (
    Identity,
    Peer,
    Peers,
    PeersError,
    fingerprint,
    generate,
    load_peers,
    peers_from,
    write_peers,
)
from murmura.net.limits import Limits
from murmura.net.tensors import decode_tensors, encode_tensors
from murmura.net.transport import Client, Delivery, Server
from murmura.net.wire import Envelope, Frame, Sealer, decode_frame, encode_frame, sign

__all__ = ["REASONS", "Client", "Counters", "Delivery", "Envelope", "Evidence", "Frame", "Guard",
           "Identity", "Limits", "Message", "Peer", "Peers", "PeersError", "RateLimit",
           "Reassembler", "Refused", "Sealer", "Server", "SignedEnvelope", "TensorSpec",
           "WireError", "decode_frame", "decode_tensors", "encode_frame", "encode_tensors",
           "fingerprint", "generate", "load_peers", "peers_from", "sign", "split",
           "write_peers"]
