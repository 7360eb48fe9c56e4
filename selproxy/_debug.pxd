# SELPROXY_DEBUG is 1 in a debug build (SELPROXY_DEBUG=1 pip install ...):
# code under `if SELPROXY_DEBUG:` compiles away in a release build.
cdef extern from "_debug.h":
    cdef int SELPROXY_DEBUG
