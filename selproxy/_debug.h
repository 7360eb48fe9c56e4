#ifndef SELPROXY_DEBUG
#define SELPROXY_DEBUG 0
#endif
