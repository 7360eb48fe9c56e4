# HTTP/1.1 message heads: what the core learns from a head, and how it
# writes one out again.  RFC 9110 and RFC 9112 section numbers are cited in
# _http.pyx where they force a branch.

cdef enum BodyFraming:
    BODY_NONE = 0           # no body: no framing headers, or HEAD/1xx/204/304
    BODY_LENGTH = 1         # Content-Length: N
    BODY_CHUNKED = 2        # Transfer-Encoding: ..., chunked
    BODY_UNTIL_CLOSE = 3    # a response with neither: the body ends at EOF


cdef class MessageHead:
    cdef public bytes method        # requests
    cdef public bytes target        # requests
    cdef public int status          # responses
    cdef public bytes reason        # responses
    cdef public int version_minor   # HTTP/1.<minor>
    cdef public list headers        # [(name, value)] as received, bytes

    # Filled by analyse_request/analyse_raw_response.
    cdef public BodyFraming framing
    cdef public long long content_length
    cdef public bytes transfer_encoding
    cdef public bint conn_close
    cdef public bint conn_upgrade
    cdef public bint expect_continue
    cdef public bytes upgrade
    cdef public bytes host
    cdef public list end_to_end     # headers minus hop-by-hop and framing: the headers
                                    # list itself when nothing was dropped, so never
                                    # change it in place
    cdef public bytes kept          # a response read raw: its end-to-end field lines,
                                    # as they came; end_to_end is None then

    cdef list pairs(self)

    cdef int collect(self) except -1


cdef MessageHead new_request_head(bytes method, bytes target)
cdef MessageHead new_response_head(int status, bytes reason)
cdef object analyse_request(MessageHead head)
cdef object analyse_raw_response(MessageHead head, const char* p, Py_ssize_t size,
                                 bytes request_method, Py_ssize_t* head_size)

cdef bytes request_head_bytes(MessageHead head, list extra)
cdef bytes response_head_bytes(MessageHead head, bint close, bint chunked)
cdef bytes chunk_size_line(Py_ssize_t size)
cdef bytes last_chunk_bytes(list trailers)
cdef bytes answer_head_bytes(int status, list headers, long long content_length, bint close)
cdef int add_response_field(MessageHead head, bytes name, bytes value) except -1

# Fields and targets the proxy did not read off the wire (a handler's
# response, a handler's upstream call): what may be written into a head.
cdef object field_error(bytes name, bytes value)
cdef object target_error(bytes method, bytes target)

# For the debug build's test entry points (_probes.pyx).
cdef object response_framing(MessageHead head, bytes request_method)
cdef long long _parse_length_at(const unsigned char* p, Py_ssize_t size) except -2
cdef bytes _with_decimal(const char* prefix, Py_ssize_t prefix_size, long long value,
                         const char* suffix, Py_ssize_t suffix_size)
