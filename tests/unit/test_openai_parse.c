/* test_openai_parse.c - OpenAI request parsing and response shaping of
 * sluice-frontend, without servers. The service's files are compiled in
 * here (the Makefile links services' objects only into their binaries). */
#include "services/frontend/openai_format.c"
#include "services/frontend/openai_parse.c"

#include <check.h>

static oai_request_t *parse_ok(oai_kind_t kind, const char *body) {
    oai_request_t *r = NULL;
    oai_error_t err = {0};
    int rc = oai_request_parse(body, strlen(body), kind, &r, &err);
    ck_assert_msg(rc == 0, "%s: %s", body, err.message);
    return r;
}

static void parse_bad(oai_kind_t kind, const char *body, int status, const char *param) {
    oai_request_t *r = NULL;
    oai_error_t err = {0};
    int rc = oai_request_parse(body, strlen(body), kind, &r, &err);
    ck_assert_msg(rc != 0, "accepted: %s", body);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(err.status, status);
    ck_assert_msg(strcmp(err.param, param) == 0, "%s: param '%s', want '%s'", body, err.param,
                  param);
    ck_assert(err.message[0]);
}

START_TEST(test_chat_full) {
    oai_request_t *r = parse_ok(
        OAI_KIND_CHAT,
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":"
        "\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":"
        "\"b\"}]},{\"role\":\"assistant\",\"content\":null}],\"max_tokens\":5,"
        "\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.1,"
        "\"seed\":42,\"stop\":[\"x\",\"\",\"yy\"],\"n\":3,\"presence_penalty\":0.5,"
        "\"frequency_penalty\":-0.5,\"repetition_penalty\":1.1,\"logprobs\":true,"
        "\"top_logprobs\":4,\"user\":\"u\",\"ignore_eos\":true,\"min_tokens\":2,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"chat_template_kwargs\":{\"k\":1},"
        "\"unknown_field\":[1]}");
    ck_assert_str_eq(r->model, "m");
    ck_assert_uint_eq(r->max_tokens, 7); /* max_completion_tokens wins */
    ck_assert_float_eq_tol(r->temperature, 0.5f, 1e-6);
    ck_assert_float_eq_tol(r->top_p, 0.9f, 1e-6);
    ck_assert_int_eq(r->top_k, 40);
    ck_assert(r->has_seed);
    ck_assert_uint_eq(r->seed, 42);
    ck_assert_uint_eq(r->n_stop, 2); /* the empty one is dropped */
    ck_assert_str_eq(r->stop[1], "yy");
    ck_assert_uint_eq(r->n, 3);
    ck_assert(r->logprobs);
    ck_assert_uint_eq(r->top_logprobs, 4);
    ck_assert(r->ignore_eos && r->stream && r->include_usage);
    ck_assert_uint_eq(r->min_tokens, 2);
    ck_assert_str_eq(r->user, "u");
    cJSON *msgs = cJSON_GetObjectItem(r->chat, "messages");
    ck_assert_int_eq(cJSON_GetArraySize(msgs), 3);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 1), "content")->valuestring,
                     "ab");
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 2), "content")->valuestring, "");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(r->chat, "add_generation_prompt")));
    ck_assert(cJSON_IsObject(cJSON_GetObjectItem(r->chat, "chat_template_kwargs")));
    oai_request_free(r);
}
END_TEST

START_TEST(test_completion_prompts_and_defaults) {
    oai_request_t *r = parse_ok(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"hi\"}");
    ck_assert_str_eq(r->prompt_text, "hi");
    ck_assert_float_eq_tol(r->temperature, 1.0f, 1e-6); /* OpenAI's default */
    ck_assert_uint_eq(r->n, 1);
    ck_assert_uint_eq(r->max_tokens, 0);
    ck_assert(!r->stream && !r->logprobs);
    oai_request_free(r);
    r = parse_ok(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":[\"one\"],\"stop\":\"s\"}");
    ck_assert_str_eq(r->prompt_text, "one");
    ck_assert_uint_eq(r->n_stop, 1);
    oai_request_free(r);
    r = parse_ok(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":[1,2,3],\"logprobs\":2}");
    ck_assert_uint_eq(r->n_prompt_ids, 3);
    ck_assert_uint_eq(r->prompt_ids[2], 3);
    ck_assert(r->logprobs);
    ck_assert_uint_eq(r->top_logprobs, 2);
    oai_request_free(r);
}
END_TEST

START_TEST(test_bad_inputs) {
    parse_bad(OAI_KIND_COMPLETION, "", 400, "");
    parse_bad(OAI_KIND_COMPLETION, "{", 400, "");
    parse_bad(OAI_KIND_COMPLETION, "42", 400, "");
    parse_bad(OAI_KIND_COMPLETION, "{\"prompt\":\"x\"}", 400, "model");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"\",\"prompt\":\"x\"}", 400, "model");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\"}", 400, "prompt");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":[]}", 400, "prompt");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":[1.5]}", 400, "prompt");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":[-1]}", 400, "prompt");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":[1e12]}", 400, "prompt");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":0}", 400,
              "max_tokens");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":\"5\"}", 400,
              "max_tokens");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":-1}", 400,
              "temperature");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":0}", 400, "top_p");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"n\":17}", 400, "n");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":1}", 400,
              "stream");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[1]}", 400, "stop");
    parse_bad(OAI_KIND_COMPLETION,
              "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
              "\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}",
              400, "stop");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":21}", 400,
              "logprobs");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"stream_options\":3}", 400,
              "stream_options");
    parse_bad(OAI_KIND_COMPLETION, "{\"model\":\"m\",\"prompt\":\"x\",\"user\":3}", 400, "user");
    parse_bad(OAI_KIND_CHAT, "{\"model\":\"m\"}", 400, "messages");
    parse_bad(OAI_KIND_CHAT, "{\"model\":\"m\",\"messages\":{}}", 400, "messages");
    parse_bad(OAI_KIND_CHAT, "{\"model\":\"m\",\"messages\":[1]}", 400, "messages[0]");
    parse_bad(OAI_KIND_CHAT,
              "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
              "\"user\",\"content\":5}]}",
              400, "messages[1].content");
    parse_bad(OAI_KIND_CHAT,
              "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
              "\"image_url\",\"image_url\":{}}]}]}",
              400, "messages[0].content");
    parse_bad(OAI_KIND_CHAT,
              "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
              "\"top_logprobs\":2}",
              400, "top_logprobs");
    parse_bad(OAI_KIND_CHAT,
              "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
              "\"chat_template_kwargs\":[]}",
              400, "chat_template_kwargs");
    /* not NUL-terminated input is read only up to len */
    oai_request_t *r = NULL;
    oai_error_t err;
    const char body[] = "{\"model\":\"m\",\"prompt\":\"x\"}GARBAGE";
    ck_assert_int_eq(oai_request_parse(body, sizeof body - 8, OAI_KIND_COMPLETION, &r, &err), 0);
    oai_request_free(r);
    oai_request_free(NULL);
}
END_TEST

START_TEST(test_format_shapes) {
    char *e = oai_error_json(404, "no \"such\" model", "model");
    cJSON *j = cJSON_Parse(e);
    cJSON *err = cJSON_GetObjectItem(j, "error");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "message")->valuestring, "no \"such\" model");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "param")->valuestring, "model");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "code")->valuestring, "model_not_found");
    cJSON_Delete(j);
    free(e);
    e = oai_error_json(400, "bad", NULL);
    ck_assert_ptr_nonnull(strstr(e, "\"param\":null"));
    ck_assert_ptr_nonnull(strstr(e, "invalid_request_error"));
    free(e);

    char id[64];
    oai_id_make(id, sizeof id, "chatcmpl-");
    ck_assert_int_eq(strncmp(id, "chatcmpl-", 9), 0);
    ck_assert_uint_eq(strlen(id), 9 + 24);
    char id2[64];
    oai_id_make(id2, sizeof id2, "chatcmpl-");
    ck_assert_str_ne(id, id2);

    oai_resp_ctx_t ctx = {.kind = OAI_KIND_CHAT, .id = id, .created = 1, .model = "m"};
    char *c = oai_chunk_json(&ctx, 2, true, "hé", NULL, NULL, NULL);
    j = cJSON_Parse(c);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion.chunk");
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_int_eq(cJSON_GetObjectItem(ch, "index")->valueint, 2);
    cJSON *d = cJSON_GetObjectItem(ch, "delta");
    ck_assert_str_eq(cJSON_GetObjectItem(d, "role")->valuestring, "assistant");
    ck_assert_str_eq(cJSON_GetObjectItem(d, "content")->valuestring, "hé");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")));
    cJSON_Delete(j);
    free(c);
    oai_usage_t u = {.prompt = 3, .completion = 4, .cached = 1};
    c = oai_chunk_json(&ctx, 0, false, NULL, NULL, NULL, &u);
    ck_assert_ptr_nonnull(strstr(c, "\"choices\":[]"));
    ck_assert_ptr_nonnull(strstr(c, "\"total_tokens\":7"));
    ck_assert_ptr_nonnull(strstr(c, "\"cached_tokens\":1"));
    free(c);
    ctx.kind = OAI_KIND_COMPLETION;
    oai_choice_t chs[2] = {{.text = "a", .finish = "stop"}, {.text = "b", .finish = "length"}};
    c = oai_response_json(&ctx, chs, 2, &u);
    j = cJSON_Parse(c);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 1);
    ck_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, "b");
    ck_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length");
    cJSON_Delete(j);
    free(c);
}
END_TEST

START_TEST(test_logprobs_shapes) {
    uint8_t bad[] = {0xe2, 0x82};
    Sluice__V1__TokenLogprob t0 = SLUICE__V1__TOKEN_LOGPROB__INIT, t1 = t0, alt = t0;
    t0.logprob = -0.5f;
    t0.text.data = (uint8_t *)"ab";
    t0.text.len = 2;
    t1.logprob = -1.5f;
    t1.text.data = bad;
    t1.text.len = 2;
    alt.logprob = -2.0f;
    alt.text.data = (uint8_t *)"z";
    alt.text.len = 1;
    Sluice__V1__TokenLogprob *tops[] = {&alt};
    Sluice__V1__PositionLogprobs p0 = SLUICE__V1__POSITION_LOGPROBS__INIT, p1 = p0;
    p0.chosen = &t0;
    p0.n_top = 1;
    p0.top = tops;
    p1.chosen = &t1;
    Sluice__V1__PositionLogprobs *ps[] = {&p0, &p1};
    Sluice__V1__GenerateChunk c = SLUICE__V1__GENERATE_CHUNK__INIT;
    c.n_logprobs = 2;
    c.logprobs = ps;

    cJSON *acc = NULL;
    size_t off = 0;
    ck_assert_int_eq(oai_logprobs_append(OAI_KIND_CHAT, &acc, &c, &off), 0);
    cJSON *content = cJSON_GetObjectItem(acc, "content");
    ck_assert_int_eq(cJSON_GetArraySize(content), 2);
    cJSON *e0 = cJSON_GetArrayItem(content, 0);
    ck_assert_str_eq(cJSON_GetObjectItem(e0, "token")->valuestring, "ab");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "top_logprobs")), 1);
    cJSON *e1 = cJSON_GetArrayItem(content, 1);
    ck_assert_str_eq(cJSON_GetObjectItem(e1, "token")->valuestring, "bytes:\\xe2\\x82");
    ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(e1, "bytes"), 0)->valueint, 0xe2);
    cJSON_Delete(acc);

    acc = NULL;
    off = 0;
    ck_assert_int_eq(oai_logprobs_append(OAI_KIND_COMPLETION, &acc, &c, &off), 0);
    ck_assert_int_eq(oai_logprobs_append(OAI_KIND_COMPLETION, &acc, &c, &off), 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(acc, "tokens")), 4);
    cJSON *offs = cJSON_GetObjectItem(acc, "text_offset");
    ck_assert_int_eq(cJSON_GetArrayItem(offs, 3)->valueint, 6);
    ck_assert_uint_eq(off, 8);
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(acc, "top_logprobs"), 0);
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(top0, "z")));
    cJSON_Delete(acc);
}
END_TEST

int main(void) {
    Suite *s = suite_create("openai_parse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_chat_full);
    tcase_add_test(tc, test_completion_prompts_and_defaults);
    tcase_add_test(tc, test_bad_inputs);
    tcase_add_test(tc, test_format_shapes);
    tcase_add_test(tc, test_logprobs_shapes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
