"""The scheduler: an in-memory graph of hosts, tasks and peers, and the parent choice.

Layers, pure ones first (none of the first four touches a socket, a thread or
the wall clock):

* ``resource``  the graph (hosts, tasks, peers, pieces, edges) and its GC;
* ``evaluator`` which peers may serve a peer, and in what order;
* ``policy``    what to answer a peer that asks for parents (parents, a seed
                to trigger, the origin, or "wait for a round");
* ``core``      the AnnouncePeer protocol over the proto messages: validation,
                state changes, answers, typed errors;
* ``service``   the gRPC (``grpc.aio``) servicer: status codes, scheduling
                rounds, the GC loop, seed triggers;
* ``server``    process lifecycle: bind, print the port, stop on signals.
"""
