/* err.c - text for Sluice error codes. */
#include "common/base/err.h"

#include <string.h>

const char *sl_strerror(int err) {
    switch (err) {
    case SL_OK: return "success";
    case SL_EINVAL: return "invalid argument";
    case SL_ENOMEM: return "out of memory";
    case SL_EIO: return "I/O error";
    case SL_ETIMEDOUT: return "timed out";
    case SL_ENOTFOUND: return "not found";
    case SL_EEXIST: return "already exists";
    case SL_ETOOBIG: return "too large";
    case SL_EPROTO: return "protocol error";
    case SL_ECLOSED: return "closed";
    case SL_EAGAIN: return "try again";
    case SL_ECANCELLED: return "cancelled";
    case SL_EUNSUPPORTED: return "unsupported";
    case SL_ERANGE: return "out of range";
    case SL_EUNAVAIL: return "unavailable";
    case SL_EFORMAT: return "bad format";
    case SL_EDEVICE: return "device error";
    default: break;
    }
    if (err < 0 && err > SL_EBASE) {
        /* strerror is not guaranteed thread-safe; strerrordesc_np is (glibc 2.32). */
        const char *s = strerrordesc_np(-err);
        return s ? s : "unknown system error";
    }
    return "unknown error";
}
