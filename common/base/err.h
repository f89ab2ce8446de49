/* err.h - Sluice error codes.
 *
 * Every fallible function returns int: 0 on success, a negative SL_E* code on
 * failure (negative errno values are also accepted and passed through). One
 * sl_strerror() turns any of them into text. Functions returning pointers
 * return NULL on failure.
 */
#ifndef SL_ERR_H
#define SL_ERR_H

enum sl_err {
    SL_OK = 0,
    SL_EBASE = -10000,   /* below this: Sluice codes; above: -errno */
    SL_EINVAL = -10001,  /* invalid argument or malformed input */
    SL_ENOMEM = -10002,  /* allocation failed */
    SL_EIO = -10003,     /* I/O failed */
    SL_ETIMEDOUT = -10004,
    SL_ENOTFOUND = -10005,
    SL_EEXIST = -10006,
    SL_ETOOBIG = -10007, /* message or request over a size limit */
    SL_EPROTO = -10008,  /* malformed protocol message from a peer */
    SL_ECLOSED = -10009, /* connection or stream closed */
    SL_EAGAIN = -10010,  /* try again later; a normal outcome */
    SL_ECANCELLED = -10011,
    SL_EUNSUPPORTED = -10012,
    SL_ERANGE = -10013,  /* value out of bounds */
    SL_EUNAVAIL = -10014, /* peer or service unavailable */
    SL_EFORMAT = -10015, /* bad file format */
    SL_EDEVICE = -10016, /* accelerator error */
    SL_EEND = -10017
};

/* Returns a static string describing err (an SL_E* code or a negative errno).
 * Thread-safe. */
const char *sl_strerror(int err);

#endif
