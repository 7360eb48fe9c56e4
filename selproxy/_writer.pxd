# Writing to one connection's transport: straight to the socket while the
# transport holds nothing, and pieces held while a read is parsed.

cdef class TransportWriter:
    cdef object transport
    cdef object transport_write    # transport.write, bound once
    cdef int fd                    # the socket's, or -1: always through the transport
    cdef bint transport_may_hold   # bytes may wait in the transport
    cdef unsigned long long handed # bytes handed to the transport, ever
    cdef unsigned long long sent_mark   # of those, how many had left at the last check
    cdef double stalled_since      # since when none has left; 0: not stalled
    cdef list held                 # writes held for one go (hold_writes, release); or None

    cdef void write(self, bytes data)
    cdef void writelines(self, list pieces)
    cdef void release(self)
    cdef void stop(self)
    cdef bint stalled(self, double now, double limit)


# Write buffer marks and TCP_NODELAY for a new connection's transport.
cdef void tune_transport(object transport)


# PERF: inline in each protocol, so that holding, and a held write, cost no
# call into this module (RESULTS.md, 2026-12-06: the split's instruction
# counts, callgrind).
cdef inline void hold_writes(TransportWriter out):
    """Hold writes from now until out.release()."""
    if out.held is None:
        out.held = []


cdef inline void write_or_hold(TransportWriter out, bytes data):
    if out.held is not None:
        out.held.append(data)
    else:
        out.write(data)
