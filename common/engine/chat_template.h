/* chat_template.h - Hugging Face chat templates (a Jinja2 subset) in C.
 *
 * Renders an OpenAI-style chat request to the prompt text exactly as
 * transformers' tokenizer.apply_chat_template(..., tokenize=False) does: the
 * template runs under jinja2's ImmutableSandboxedEnvironment semantics with
 * trim_blocks and lstrip_blocks, the loopcontrols extension, transformers'
 * tojson (json.dumps, ensure_ascii=False, key order kept), raise_exception()
 * and strftime_now(). Enough of Jinja is supported for the mainstream
 * templates (Llama 3.x, Qwen2.5, Mistral, Phi-3, Gemma, DeepSeek, ChatML,
 * Zephyr); anything else fails with an error naming the construct and line,
 * which a server maps to HTTP 400. See common/engine/README.md for the list.
 *
 * Thread-safety: a loaded chat_template_t is immutable; any number of threads
 * may render with it concurrently. Loading and freeing are not concurrent
 * with renders of the same template.
 *
 * Limits (per render): 16 MiB output, 5M evaluation steps, nesting depth 128,
 * 64 MiB of value memory. Hitting one is an error, never a crash.
 */
#ifndef SL_CHAT_TEMPLATE_H
#define SL_CHAT_TEMPLATE_H

#include <cjson/cJSON.h>
#include <stddef.h>

typedef struct chat_template chat_template_t;

/* Compiles one Jinja template from text (len bytes, need not be
 * NUL-terminated). On success *out owns the compiled template (free with
 * chat_template_free). On failure returns SL_EINVAL (syntax error or an
 * unsupported construct) or SL_ENOMEM, and, if err_text is non-NULL, sets
 * *err_text to a malloc'd message ("line N: ...") the caller frees. */
int chat_template_load(const char *text, size_t len, chat_template_t **out, char **err_text);

/* Compiles the templates of a tokenizer_config.json document: "chat_template"
 * as a string, or as a list of {"name", "template"} objects (each compiled);
 * also records "bos_token" / "eos_token" (string or AddedToken object) as the
 * defaults for rendering. SL_ENOTFOUND if there is no chat_template;
 * SL_EFORMAT if the JSON is malformed. err_text as for chat_template_load. */
int chat_template_load_config(const char *json, size_t len, chat_template_t **out, char **err_text);

/* Reads a tokenizer_config.json file (at most 64 MiB) and calls
 * chat_template_load_config. SL_EIO if it cannot be read. */
int chat_template_load_config_file(const char *path, chat_template_t **out, char **err_text);

/* Renders request = {"messages": [...], "tools"?: [...],
 * "add_generation_prompt"?: bool, "chat_template_kwargs"?: {...}}.
 * "messages" must be a non-empty array (apply_chat_template refuses an empty
 * one). Optional "documents" is passed to the template (none when absent);
 * "continue_final_message": true cuts the prompt after the last occurrence of
 * the final message's content and strips trailing whitespace, as transformers
 * does (incompatible with add_generation_prompt). Template variables: messages, tools (none when
 * absent), documents (none), add_generation_prompt (false when absent), bos_token and eos_token,
 * then every chat_template_kwargs entry (which may override bos/eos_token but not the four request
 * variables). bos / eos: NULL means the tokenizer_config values, or undefined when the template was
 * loaded from text. With named templates, "tool_use" is used when the request has non-null tools
 * and such a template exists, else "default", as transformers picks them. On success returns 0 and
 * sets *out_text (malloc'd, NUL-terminated; caller frees; the length is strlen unless the content
 * holds NUL bytes, see out_len). On failure returns a negative code and sets *err_text (malloc'd):
 * the raise_exception() message verbatim, or "line N: ..." for other errors.
 * out_len may be NULL. */
int chat_template_render(const chat_template_t *t, const cJSON *request, const char *bos,
                         const char *eos, char **out_text, size_t *out_len, char **err_text);

/* Default tokens recorded from tokenizer_config.json, or NULL. The strings
 * live as long as t. */
const char *chat_template_bos_token(const chat_template_t *t);
const char *chat_template_eos_token(const chat_template_t *t);

/* Number of named templates (1 for a plain string template) and the name of
 * the i-th ("default" for a plain template), or NULL when i is out of range. */
size_t chat_template_count(const chat_template_t *t);
const char *chat_template_name(const chat_template_t *t, size_t i);

/* Frees t and everything it owns. NULL is a no-op. */
void chat_template_free(chat_template_t *t);

#endif
