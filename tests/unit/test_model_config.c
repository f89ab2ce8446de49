/* test_model_config.c - config.json / generation_config.json parsing: values,
 * transformers' defaults, rope scaling (inv_freq against numbers printed by
 * transformers 4.45.2), every refusal, and a mutation fuzz loop. */
#include "common/base/err.h"
#include "common/engine/model_config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *llama_json =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
    " \"vocab_size\": 512, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
    " \"max_position_embeddings\": 4096, \"tie_word_embeddings\": true,"
    " \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 1, \"eos_token_id\": 2}";

static int parse(const char *cfg, const char *gen, model_config_t *c, char **err) {
    return model_config_parse(cfg, strlen(cfg), gen, gen ? strlen(gen) : 0, c, err);
}

START_TEST(test_llama_values) {
    model_config_t c;
    char *err = NULL;
    ck_assert_int_eq(parse(llama_json, "{\"eos_token_id\": [2, 7], \"bos_token_id\": 1}", &c, &err),
                     0);
    ck_assert_ptr_null(err);
    ck_assert_int_eq(c.arch, MODEL_ARCH_LLAMA);
    ck_assert_int_eq(c.dtype, MODEL_DTYPE_BF16);
    ck_assert_uint_eq(c.hidden_size, 64);
    ck_assert_uint_eq(c.intermediate_size, 128);
    ck_assert_uint_eq(c.n_layers, 2);
    ck_assert_uint_eq(c.n_heads, 4);
    ck_assert_uint_eq(c.n_kv_heads, 2);
    ck_assert_uint_eq(c.head_dim, 16);
    ck_assert_uint_eq(c.vocab_size, 512);
    ck_assert_uint_eq(c.max_position_embeddings, 4096);
    ck_assert(fabsf(c.rms_norm_eps - 1e-5f) < 1e-12f);
    ck_assert(c.rope_theta == 500000.0);
    ck_assert(c.tie_word_embeddings);
    ck_assert(!c.attention_bias && !c.mlp_bias);
    ck_assert_int_eq(c.rope_scaling, MODEL_ROPE_NONE);
    ck_assert_uint_eq(c.sliding_window, 0);
    ck_assert_uint_eq(c.n_eos, 2);
    ck_assert_uint_eq(c.eos_token_ids[0], 2);
    ck_assert_uint_eq(c.eos_token_ids[1], 7);
    ck_assert_int_eq(c.bos_token_id, 1);
    ck_assert_str_eq(model_arch_name(c.arch), "llama");
    ck_assert_str_eq(model_dtype_name(c.dtype), "bfloat16");
    /* Without generation_config the config.json ids stand. */
    ck_assert_int_eq(parse(llama_json, NULL, &c, &err), 0);
    ck_assert_uint_eq(c.n_eos, 1);
    ck_assert_uint_eq(c.eos_token_ids[0], 2);
    /* inv_freq for theta 500000, head_dim 16, as transformers computes it. */
    static const double want[8] = {1.0,
                                   1.939227581e-01,
                                   3.760603070e-02,
                                   7.292665076e-03,
                                   1.414213446e-03,
                                   2.742481884e-04,
                                   5.318295734e-05,
                                   1.031338525e-05};
    float inv[8];
    model_config_rope_inv_freq(&c, inv);
    for (int i = 0; i < 8; i++) ck_assert_msg(fabs(inv[i] / want[i] - 1) < 1e-6, "inv[%d]", i);
}
END_TEST

START_TEST(test_defaults_per_arch) {
    model_config_t c;
    char *err = NULL;
    const char *mistral = "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 32,"
                          " \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
                          " \"num_attention_heads\": 4, \"vocab_size\": 300}";
    ck_assert_int_eq(parse(mistral, NULL, &c, &err), 0);
    ck_assert_int_eq(c.arch, MODEL_ARCH_MISTRAL);
    ck_assert_uint_eq(c.n_kv_heads, 4);        /* defaults to num_attention_heads */
    ck_assert_uint_eq(c.sliding_window, 4096); /* MistralConfig default */
    ck_assert_int_eq(c.dtype, MODEL_DTYPE_F32);
    ck_assert_int_eq(c.bos_token_id, -1);
    ck_assert_uint_eq(c.n_eos, 0);
    const char *mistral_nosw = "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 32,"
                               " \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
                               " \"num_attention_heads\": 4, \"vocab_size\": 300,"
                               " \"sliding_window\": null, \"head_dim\": 16}";
    ck_assert_int_eq(parse(mistral_nosw, NULL, &c, &err), 0);
    ck_assert_uint_eq(c.sliding_window, 0);
    ck_assert_uint_eq(c.head_dim, 16); /* explicit head_dim wins over hidden / heads */
    const char *qwen = "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 32,"
                       " \"intermediate_size\": 64, \"num_hidden_layers\": 4,"
                       " \"num_attention_heads\": 4, \"num_key_value_heads\": 1,"
                       " \"vocab_size\": 300, \"sliding_window\": 64,"
                       " \"use_sliding_window\": false, \"eos_token_id\": [5, 6]}";
    ck_assert_int_eq(parse(qwen, NULL, &c, &err), 0);
    ck_assert(c.attention_bias && !c.o_bias);
    ck_assert_uint_eq(c.sliding_window, 0); /* use_sliding_window false */
    ck_assert_uint_eq(c.n_eos, 2);
    const char *qwen_sw = "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 32,"
                          " \"intermediate_size\": 64, \"num_hidden_layers\": 4,"
                          " \"num_attention_heads\": 4, \"vocab_size\": 300,"
                          " \"sliding_window\": 64, \"use_sliding_window\": true,"
                          " \"max_window_layers\": 2}";
    ck_assert_int_eq(parse(qwen_sw, NULL, &c, &err), 0);
    ck_assert_uint_eq(c.sliding_window, 64);
    ck_assert_uint_eq(c.swa_first_layer, 2);
}
END_TEST

START_TEST(test_rope_llama3) {
    model_config_t c;
    char *err = NULL;
    const char *j = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,"
                    " \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
                    " \"num_attention_heads\": 4, \"vocab_size\": 300,"
                    " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                    " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                    " \"original_max_position_embeddings\": 256}}";
    ck_assert_int_eq(parse(j, NULL, &c, &err), 0);
    ck_assert_int_eq(c.rope_scaling, MODEL_ROPE_LLAMA3);
    ck_assert_uint_eq(c.rope_original_max_pos, 256);
    /* transformers 4.45.2 _compute_llama3_parameters for this config. */
    static const double want[8] = {1.0,
                                   3.162277639e-01,
                                   1.000000015e-01,
                                   6.613106932e-03,
                                   1.249999972e-03,
                                   3.952847328e-04,
                                   1.250000059e-04,
                                   3.952847328e-05};
    float inv[8];
    model_config_rope_inv_freq(&c, inv);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(fabs(inv[i] / want[i] - 1) < 1e-6, "inv[%d] %g want %g", i, inv[i], want[i]);

    const char *yarn = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,"
                       " \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
                       " \"num_attention_heads\": 4, \"vocab_size\": 300,"
                       " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}}";
    ck_assert_int_eq(parse(yarn, NULL, &c, &err), SL_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err, "'yarn' is not supported"));
    free(err);
    err = NULL;
    const char *l3_missing = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,"
                             " \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
                             " \"num_attention_heads\": 4, \"vocab_size\": 300,"
                             " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}}";
    ck_assert_int_eq(parse(l3_missing, NULL, &c, &err), SL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err, "low_freq_factor"));
    free(err);
    err = NULL;
    const char *linear = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,"
                         " \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
                         " \"num_attention_heads\": 4, \"vocab_size\": 300,"
                         " \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}";
    ck_assert_int_eq(parse(linear, NULL, &c, &err), 0);
    model_config_rope_inv_freq(&c, inv);
    ck_assert(fabsf(inv[0] - 0.5f) < 1e-7f);
}
END_TEST

/* Each bad config must fail with the given code and a message holding `needle`. */
START_TEST(test_refusals) {
    static const struct {
        const char *json, *gen;
        int rc;
        const char *needle;
    } bad[] = {
        {"not json", NULL, SL_EFORMAT, "not a JSON object"},
        {"[1,2]", NULL, SL_EFORMAT, "not a JSON object"},
        {"{\"hidden_size\": 4}", NULL, SL_EFORMAT, "architectures"},
        {"{\"architectures\": [\"GPT2LMHeadModel\"]}", NULL, SL_EUNSUPPORTED, "GPT2LMHeadModel"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"torch_dtype\": \"float8\"}", NULL,
         SL_EUNSUPPORTED, "float8"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}", NULL, SL_EFORMAT,
         "intermediate_size"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": \"64\", "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         NULL, SL_EFORMAT, "hidden_size"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": -64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         NULL, SL_EFORMAT, "hidden_size"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 1e12, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         NULL, SL_EFORMAT, "hidden_size"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 66, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         NULL, SL_EFORMAT, "multiple"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"num_key_value_heads\": 3, \"vocab_size\": 300}",
         NULL, SL_EFORMAT, "num_key_value_heads"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300, \"rms_norm_eps\": -1}",
         NULL, SL_EFORMAT, "rms_norm_eps"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300, \"tie_word_embeddings\": 1}",
         NULL, SL_EFORMAT, "tie_word_embeddings"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300, \"eos_token_id\": 300}",
         NULL, SL_EFORMAT, "eos_token_id"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         "{\"eos_token_id\": [1, \"x\"]}", SL_EFORMAT, "generation_config.json"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         "{\"eos_token_id\": [1,2,3,4,5,6,7,8,9]}", SL_EFORMAT, "more than"},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
         "\"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"vocab_size\": 300}",
         "{oops", SL_EFORMAT, "generation_config.json"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        model_config_t c;
        char *err = NULL;
        int rc = parse(bad[i].json, bad[i].gen, &c, &err);
        ck_assert_msg(rc == bad[i].rc, "case %zu: rc %d (%s), want %d", i, rc, err ? err : "",
                      bad[i].rc);
        ck_assert_msg(err && strstr(err, bad[i].needle), "case %zu: message '%s' lacks '%s'", i,
                      err ? err : "(null)", bad[i].needle);
        free(err);
    }
    model_config_t c;
    ck_assert_int_eq(model_config_parse(NULL, 0, NULL, 0, &c, NULL), SL_EINVAL);
}
END_TEST

START_TEST(test_load_files) {
    char dir[] = "/tmp/sl-cfg-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    model_config_t c;
    char *err = NULL, path[256];
    ck_assert_int_eq(model_config_load(dir, &c, &err), SL_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, "config.json"));
    free(err);
    err = NULL;
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    fputs(llama_json, fp);
    fclose(fp);
    ck_assert_int_eq(model_config_load(dir, &c, &err), 0); /* no generation_config.json: fine */
    ck_assert_ptr_null(err);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    fp = fopen(path, "w");
    fputs("{\"eos_token_id\": 9}", fp);
    fclose(fp);
    ck_assert_int_eq(model_config_load(dir, &c, &err), 0);
    ck_assert_uint_eq(c.eos_token_ids[0], 9);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Random byte mutations of a valid config: parse must return 0 or an error
 * with a message, never crash (run under ASan). */
START_TEST(test_fuzz_mutations) {
    static const char alphabet[] = "{}[]\",:0123456789-+.eE nultrfa\\";
    size_t n = strlen(llama_json);
    char *buf = malloc(n + 1);
    uint64_t s = 12345;
    int ok = 0, fail = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, llama_json, n + 1);
        int muts = 1 + (int)(s % 4);
        for (int k = 0; k < muts; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(s >> 33) % n;
            buf[pos] = alphabet[(s >> 17) % (sizeof alphabet - 1)];
        }
        size_t len = (it % 7 == 0) ? (size_t)(s >> 40) % n : n; /* sometimes truncated */
        model_config_t c;
        char *err = NULL;
        int rc = model_config_parse(buf, len, buf, len, &c, &err);
        if (rc == 0) {
            ok++;
            ck_assert(c.head_dim > 0 && c.n_heads % c.n_kv_heads == 0);
        } else {
            fail++;
            ck_assert_msg(err != NULL, "iteration %d: error %d without a message", it, rc);
        }
        free(err);
    }
    ck_assert_int_gt(fail, 0);
    ck_assert_int_gt(ok, 0);
    free(buf);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model_config");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_llama_values);
    tcase_add_test(tc, test_defaults_per_arch);
    tcase_add_test(tc, test_rope_llama3);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_load_files);
    tcase_add_test(tc, test_fuzz_mutations);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
