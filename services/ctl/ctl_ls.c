/* ctl_ls.c - `sluice-ctl ls`: live instances grouped by component.
 *
 * Reads the namespace's discovery prefix from etcd in one range request, so
 * the listing is one consistent revision. Records that fail validation are
 * reported on stderr (and under "invalid" with --json), never hidden: an
 * operator running ls is usually looking for exactly that kind of trouble.
 */
#include "services/ctl/ctl.h"
#include "common/base/err.h"
#include "common/runtime/etcd.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    COL_INSTANCE,
    COL_ENDPOINT,
    COL_HOST,
    COL_PID,
    COL_MODEL,
    COL_BLOCK,
    COL_KVBLOCKS,
    COL_STARTED,
    COL_VERSION,
    NCOLS
};
static const char *const col_names[NCOLS] = {"INSTANCE", "ENDPOINT",  "HOST",    "PID",    "MODEL",
                                             "BLOCK",    "KV_BLOCKS", "STARTED", "VERSION"};

typedef struct row {
    char cells[NCOLS][72];
} row_t;

static void int_cell(char *buf, size_t len, int64_t v) {
    if (v < 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%" PRId64, v);
}

static void row_fill(row_t *row, const ctl_record_t *r) {
    ctl_safe(r->instance, row->cells[COL_INSTANCE], sizeof row->cells[0], 16);
    ctl_safe(r->endpoint, row->cells[COL_ENDPOINT], sizeof row->cells[0], 24);
    ctl_safe(*r->host ? r->host : NULL, row->cells[COL_HOST], sizeof row->cells[0], 32);
    int_cell(row->cells[COL_PID], sizeof row->cells[0], r->pid);
    ctl_safe(*r->model ? r->model : NULL, row->cells[COL_MODEL], sizeof row->cells[0], 40);
    int_cell(row->cells[COL_BLOCK], sizeof row->cells[0], r->block_size);
    int_cell(row->cells[COL_KVBLOCKS], sizeof row->cells[0], r->kv_blocks);
    ctl_safe(*r->started_at ? r->started_at : NULL, row->cells[COL_STARTED], sizeof row->cells[0],
             32);
    ctl_safe(*r->version ? r->version : NULL, row->cells[COL_VERSION], sizeof row->cells[0], 16);
}

static void print_table(const ctl_record_t *recs, const row_t *rows, size_t n) {
    size_t width[NCOLS];
    for (int c = 0; c < NCOLS; c++) {
        width[c] = strlen(col_names[c]);
        for (size_t i = 0; i < n; i++)
            if (strlen(rows[i].cells[c]) > width[c]) width[c] = strlen(rows[i].cells[c]);
    }
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && strcmp(recs[j].component, recs[i].component) == 0) j++;
        char comp[80];
        printf("%s (%zu)\n", ctl_safe(recs[i].component, comp, sizeof comp, 64), j - i);
        printf(" ");
        for (int c = 0; c < NCOLS; c++)
            printf("%s%-*s", c ? "  " : " ", c == NCOLS - 1 ? 0 : (int)width[c], col_names[c]);
        printf("\n");
        for (size_t k = i; k < j; k++) {
            printf(" ");
            for (int c = 0; c < NCOLS; c++)
                printf("%s%-*s", c ? "  " : " ", c == NCOLS - 1 ? 0 : (int)width[c],
                       rows[k].cells[c]);
            printf("\n");
        }
        i = j;
    }
}

int ctl_ls(const ctl_cfg_t *cfg) {
    int status = 1;
    etcd_t *etcd = NULL;
    etcd_range_result_t res;
    memset(&res, 0, sizeof res);
    ctl_record_t *recs = NULL;
    row_t *rows = NULL;
    cJSON *doc = NULL;
    size_t nrec = 0, ninvalid = 0;
    char prefix[256];

    if (ctl_prefix(prefix, sizeof prefix, cfg->common.ns, cfg->component) < 0) {
        fprintf(stderr, "sluice-ctl: namespace or component too long\n");
        goto out;
    }
    int rc = etcd_open(cfg->common.etcd, 3000, &etcd);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: --etcd %s: %s\n", cfg->common.etcd, sl_strerror(rc));
        goto out;
    }
    rc = etcd_range_prefix(etcd, prefix, 0, &res);
    if (rc < 0) {
        fprintf(stderr, "sluice-ctl: cannot list %s from etcd at %s: %s\n", prefix,
                cfg->common.etcd, sl_strerror(rc));
        goto out;
    }
    recs = calloc(res.n ? res.n : 1, sizeof *recs);
    rows = calloc(res.n ? res.n : 1, sizeof *rows);
    doc = cJSON_CreateObject();
    cJSON *comps = cJSON_AddObjectToObject(doc, "components");
    cJSON *invalid = cJSON_AddArrayToObject(doc, "invalid");
    if (!recs || !rows || !doc || !comps || !invalid) {
        fprintf(stderr, "sluice-ctl: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < res.n; i++) {
        char err[160];
        const etcd_kv_t *kv = &res.kvs[i];
        if (ctl_record_parse(cfg->common.ns, kv->key, kv->value, kv->value_len, &recs[nrec], err,
                             sizeof err) < 0) {
            char k[200];
            fprintf(stderr, "sluice-ctl: skipping invalid record %s: %s\n",
                    ctl_safe(kv->key, k, sizeof k, 180), err);
            cJSON *bad = cJSON_CreateObject();
            cJSON_AddStringToObject(bad, "key", kv->key);
            cJSON_AddStringToObject(bad, "error", err);
            cJSON_AddItemToArray(invalid, bad);
            ninvalid++;
            continue;
        }
        row_fill(&rows[nrec], &recs[nrec]);
        cJSON *arr = cJSON_GetObjectItemCaseSensitive(comps, recs[nrec].component);
        if (!arr) arr = cJSON_AddArrayToObject(comps, recs[nrec].component);
        cJSON *item = cJSON_Duplicate(recs[nrec].json, 1);
        if (item) {
            cJSON_AddStringToObject(item, "key", kv->key);
            cJSON_AddItemToArray(arr, item);
        }
        nrec++;
    }
    if (cfg->json) {
        cJSON_AddStringToObject(doc, "namespace", cfg->common.ns);
        cJSON_AddNumberToObject(doc, "count", (double)nrec);
        cJSON_AddNumberToObject(doc, "revision", (double)res.revision);
        char *text = cJSON_PrintUnformatted(doc);
        if (!text) {
            fprintf(stderr, "sluice-ctl: out of memory\n");
            goto out;
        }
        printf("%s\n", text);
        cJSON_free(text);
    } else if (nrec == 0) {
        printf("no instances in namespace %s%s%s\n", cfg->common.ns,
               cfg->component ? " for component " : "", cfg->component ? cfg->component : "");
    } else {
        print_table(recs, rows, nrec);
        printf("%zu instance%s in namespace %s (etcd revision %" PRId64 ")\n", nrec,
               nrec == 1 ? "" : "s", cfg->common.ns, res.revision);
    }
    if (ninvalid) fprintf(stderr, "sluice-ctl: %zu invalid record(s) skipped\n", ninvalid);
    status = 0;
out:
    for (size_t i = 0; recs && i < nrec; i++) ctl_record_clear(&recs[i]);
    free(recs);
    free(rows);
    cJSON_Delete(doc);
    etcd_range_result_free(&res);
    etcd_free(etcd);
    return status;
}
