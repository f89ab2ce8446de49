#!/usr/bin/env python3
"""chat_template_ref.py - the outside reference for common/engine/chat_template.

Renders chat templates with jinja2 exactly as Hugging Face transformers'
apply_chat_template(..., tokenize=False) does in the 4.4x line
(transformers/utils/chat_template_utils.py: _compile_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the
loopcontrols extension and a pass-through {% generation %} block, tojson
replaced by json.dumps(ensure_ascii=False, key order kept), and the globals
raise_exception() and strftime_now(). Template variables: messages, tools
(None when absent), documents=None, add_generation_prompt, then the special
tokens (bos_token, eos_token) and chat_template_kwargs on top.

Usage:
  chat_template_ref.py TEMPLATE(.jinja|tokenizer_config.json) REQUEST.json [--bos B] [--eos E]
      prints the rendered prompt; on a template error prints it on stderr, exit 3
  chat_template_ref.py --batch CASES.json
      CASES is a JSON list of {"template": text | "config": path, "request": {...},
      "bos"?: str, "eos"?: str}; prints a JSON list of
      {"ok": true, "text": ...} or {"ok": false, "kind": "raise"|"error", "error": ...}
"""
import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class AssistantTracker(jinja2.ext.Extension):
    """transformers' {% generation %} block; renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(lineno)

    def _passthrough(self, caller):
        return caller()


def compile_template(text):
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(text)


def token_text(v):
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def load(case):
    """Returns (template text, bos, eos) with transformers' named-template choice."""
    bos, eos = case.get("bos"), case.get("eos")
    if "config" in case:
        with open(case["config"], encoding="utf-8") as f:
            cfg = json.load(f)
        tmpl = cfg.get("chat_template")
        if bos is None:
            bos = token_text(cfg.get("bos_token"))
        if eos is None:
            eos = token_text(cfg.get("eos_token"))
        if isinstance(tmpl, list):
            named = {t["name"]: t["template"] for t in tmpl}
            tools = case["request"].get("tools")
            if tools is not None and "tool_use" in named:
                tmpl = named["tool_use"]
            elif "default" in named:
                tmpl = named["default"]
            else:
                raise ValueError("no default chat template")
        return tmpl, bos, eos
    return case["template"], bos, eos


def render(case):
    text, bos, eos = load(case)
    req = case["request"]
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    kwargs.update(req.get("chat_template_kwargs") or {})
    return compile_template(text).render(
        messages=req["messages"], tools=req.get("tools"), documents=None,
        add_generation_prompt=req.get("add_generation_prompt", False), **kwargs)


def run_case(case):
    try:
        return {"ok": True, "text": render(case)}
    except TemplateError as e:
        kind = "raise" if type(e) is TemplateError else "error"
        return {"ok": False, "kind": kind, "error": str(e)}
    except Exception as e:  # TypeError, ValueError, ... from inside the template
        return {"ok": False, "kind": "error", "error": f"{type(e).__name__}: {e}"}


def main(argv):
    if len(argv) >= 3 and argv[1] == "--batch":
        with open(argv[2], encoding="utf-8") as f:
            cases = json.load(f)
        sys.stdout.write(json.dumps([run_case(c) for c in cases], ensure_ascii=True))
        return 0
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    case = {"request": json.load(open(argv[2], encoding="utf-8"))}
    if argv[1].endswith(".json"):
        case["config"] = argv[1]
    else:
        case["template"] = open(argv[1], encoding="utf-8").read()
    for flag in ("--bos", "--eos"):
        if flag in argv:
            case[flag[2:]] = argv[argv.index(flag) + 1]
    r = run_case(case)
    if not r["ok"]:
        sys.stderr.write(r["error"] + "\n")
        return 3
    sys.stdout.write(r["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
