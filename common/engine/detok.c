/* detok.c - incremental detokenizer: a thin owner of the streaming decoder
 * state of tokenizer_decode.c, which is what full decode runs too. */
#include "common/engine/detok.h"

#include "common/base/err.h"
#include "common/engine/tokenizer_internal.h"

#include <stdlib.h>

struct sl_detok {
    tk_decst_t st;
    bool skip_special;
};

int sl_detok_new(const sl_tokenizer_t *t, bool skip_special, sl_detok_t **out) {
    int rc = 0;
    sl_detok_t *d = NULL;
    if (!t || !out) return SL_EINVAL;
    *out = NULL;
    d = calloc(1, sizeof *d);
    if (!d) {
        rc = SL_ENOMEM;
        goto out;
    }
    if ((rc = tk_decst_init(&d->st, t))) goto out;
    if ((rc = tk_buf_put(&d->st.out, "", 0))) goto out;
    d->skip_special = skip_special;
    *out = d;
    d = NULL;
out:
    sl_detok_free(d);
    return rc;
}

void sl_detok_free(sl_detok_t *d) {
    if (!d) return;
    tk_decst_free(&d->st);
    free(d);
}

static int detok_take(sl_detok_t *d, int rc, const char **text, size_t *len) {
    if (rc == 0) rc = tk_buf_put(&d->st.out, "", 0);
    if (rc) {
        *text = "";
        *len = 0;
        return rc;
    }
    *text = d->st.out.p;
    *len = d->st.out.len;
    return 0;
}

int sl_detok_prime(sl_detok_t *d, const uint32_t *ids, size_t n) {
    int rc = 0;
    if (!d || (!ids && n)) return SL_EINVAL;
    for (size_t i = 0; i < n && !rc; i++) {
        d->st.out.len = 0; /* the context's own text is dropped */
        rc = tk_decst_push(&d->st, ids[i], d->skip_special);
    }
    d->st.out.len = 0;
    return rc;
}

int sl_detok_push(sl_detok_t *d, uint32_t id, const char **text, size_t *len) {
    if (!d || !text || !len) return SL_EINVAL;
    d->st.out.len = 0;
    return detok_take(d, tk_decst_push(&d->st, id, d->skip_special), text, len);
}

int sl_detok_finish(sl_detok_t *d, const char **text, size_t *len) {
    if (!d || !text || !len) return SL_EINVAL;
    d->st.out.len = 0;
    return detok_take(d, tk_decst_finish(&d->st), text, len);
}
