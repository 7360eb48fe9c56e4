# The client side: one protocol per client connection, its exchanges, and
# the hand-off of claimed requests to Python handlers.  Only ProxyCore calls
# in, through these functions; the classes are private to _client.pyx.
from selproxy._worker cimport Worker
from selproxy._upstream cimport UpstreamPool

cdef object new_client(Worker worker, UpstreamPool pool)
cdef void check_client_deadlines(Worker worker, double now)
cdef void drain_clients(Worker worker)
cdef void abort_clients(Worker worker)

cdef long live_clients()
cdef long live_exchanges()
