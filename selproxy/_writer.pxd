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
    cdef list held                 # writes held for one go (hold/release); None: not holding

    cdef void write(self, bytes data)
    cdef void writelines(self, list pieces)
    cdef void hold(self)
    cdef void release(self)
    cdef void stop(self)
    cdef bint stalled(self, double now, double limit)


# Write buffer marks and TCP_NODELAY for a new connection's transport.
cdef void tune_transport(object transport)
