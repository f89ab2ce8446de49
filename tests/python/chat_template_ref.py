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

With CHAT_TEMPLATE_REF=transformers in the environment (and transformers
importable, e.g. 4.45.2 as deploy/deps-python.sh installs for /usr/bin/python3),
every render goes through the real tokenizer.apply_chat_template(...,
tokenize=False) instead of the mirror above.

Usage:
  chat_template_ref.py TEMPLATE(.jinja|tokenizer_config.json) REQUEST.json [--bos B] [--eos E]
      prints the rendered prompt; on a template error prints it on stderr, exit 3
  chat_template_ref.py --batch CASES.json
      CASES is a JSON list of {"template": text | "config": path, "request": {...},
      "bos"?: str, "eos"?: str}; prints a JSON list of
      {"ok": true, "text": ...} or {"ok": false, "kind": "raise"|"error", "error": ...}
  chat_template_ref.py --fuzz SEED N REQUEST.json...
      generates N random templates from a grammar of the supported subset
      (deterministic for SEED), renders each with the requests in turn, prints
      a JSON list of {"template", "request" (index), plus the result fields}
"""
import copy
import json
import os
import random
import sys
import warnings
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


def render_transformers(text, bos, eos, req):
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    special = {}
    if bos is not None:
        special["bos_token"] = bos
    if eos is not None:
        special["eos_token"] = eos
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), **special)
    tok.chat_template = text
    return tok.apply_chat_template(req["messages"], tools=req.get("tools"),
                                   documents=req.get("documents"),
                                   add_generation_prompt=req.get("add_generation_prompt", False),
                                   continue_final_message=req.get("continue_final_message", False),
                                   tokenize=False, **(req.get("chat_template_kwargs") or {}))


def render(case):
    text, bos, eos = load(case)
    if os.environ.get("CHAT_TEMPLATE_REF") == "transformers":
        return render_transformers(text, bos, eos, case["request"])
    req = case["request"]
    if not req["messages"]:  # apply_chat_template indexes conversation[0] first
        raise IndexError("list index out of range")
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    kwargs.update(req.get("chat_template_kwargs") or {})
    agp = req.get("add_generation_prompt", False)
    cont = req.get("continue_final_message", False)
    if cont and agp:
        raise ValueError("continue_final_message and add_generation_prompt are not compatible.")
    rendered = compile_template(text).render(
        messages=req["messages"], tools=req.get("tools"), documents=req.get("documents"),
        add_generation_prompt=agp, **kwargs)
    if cont:  # transformers 4.45 apply_chat_template
        final_message = req["messages"][-1]["content"]
        rendered = rendered[: rendered.rindex(final_message) + len(final_message)].rstrip()
    return rendered


def run_case(case):
    try:
        return {"ok": True, "text": render(case)}
    except TemplateError as e:
        kind = "raise" if type(e) is TemplateError else "error"
        return {"ok": False, "kind": kind, "error": str(e)}
    except Exception as e:  # TypeError, ValueError, ... from inside the template
        return {"ok": False, "kind": "error", "error": f"{type(e).__name__}: {e}"}


# ---- differential fuzzing ------------------------------------------------------------------
# A grammar of the subset that the C interpreter claims to match exactly. Left
# out on purpose (documented gaps): Markup (safe, escape) inside containers,
# printing generator objects (so generator filters end in "| list"), and
# slices of literals, whose result depends on jinja's constant folding.
class TemplateGen:
    STRS = ["'a'", '"b c"', "'x\\ny'", "''", "' sp '", "'héllo'", "'A,B,c'", "'{\"k\": 1}'",
            "'it\\'s'", "'\\t'", "'<|im|>'", "'ΣΟΦΙΑ straße'"]
    NUMS = ['0', '1', '2', '-3', '10', '1.5', '0.1', '2.0', '1e3', '3.25', '7']
    VARS = ['messages', 'tools', 'add_generation_prompt', 'bos_token', 'eos_token', 'ns.x', 'x',
            'undefined_v', 'messages[0]', 'messages[-1]', 'tools[0].function',
            'tools[0].function.parameters', 'messages[0].content', 'messages[-1].role']
    LOOP_VARS = ['m', 'loop.index', 'loop.first', 'loop.last', 'loop.length', 'loop.index0',
                 'm.role', 'm.content', "m['tool_calls']", 'loop.revindex', 'loop.previtem']
    NUM_EXPRS = ['messages | length', 'ns.x | int', "'12' | int", '(bos_token | length)', '3',
                 '2.5', '-1', '0']
    FILTERS = ['trim', 'length', 'upper', 'lower', 'tojson', 'tojson(indent=2)', 'first', 'list',
               'string', 'int', 'float', "default('D')", "default('D', true)", "join(',')",
               "replace('a', 'Z')", 'capitalize', 'title', 'count', 'reverse | list', 'sort',
               'unique | list', 'items | list', 'dictsort', "map(attribute='role') | list",
               "selectattr('role', 'equalto', 'user') | list", "rejectattr('content') | list",
               "select('string') | list", 'abs', 'round', 'sum', 'max', 'min', 'indent(2)',
               'wordcount', 'list | length', "join(', ', attribute='role')", 'last',
               "map('upper') | join", 'tojson(sort_keys=true)']
    TESTS = ['defined', 'undefined', 'none', 'string', 'mapping', 'iterable', 'sequence', 'number',
             'integer', 'float', 'boolean', 'true', 'false', 'eq 1', "in ['a', 'b']", 'odd', 'even',
             'divisibleby(2)', 'callable', 'lower', 'upper']
    METHODS = ['strip()', "split(',')", 'split()', 'upper()', 'lower()', "startswith('a')",
               "endswith('>')", "replace('a','b')", "find('l')", 'title()', "count('a')",
               "get('role')", "get('nope', 'dd')", 'items()', 'keys()', 'values()', "lstrip('<')",
               'rstrip()', 'format(1)', "join(['p','q'])", "rsplit(',', 1)", 'capitalize()']
    OPS = ['+', '-', '*', '/', '//', '%', '~', '==', '!=', '<', '>', '<=', '>=', 'in', 'not in',
           'and', 'or', '**']

    def __init__(self, seed):
        self.r = random.Random(seed)
        self.in_loop = 0

    def var(self):
        pool = self.VARS + (self.LOOP_VARS if self.in_loop else [])
        return self.r.choice(pool)

    def num(self, d):
        r = self.r
        if self.in_loop and r.random() < 0.3:
            return r.choice(['loop.index', 'loop.index0', 'loop.length', 'loop.revindex'])
        if d < 3 and r.random() < 0.3:
            return f"({self.num(d + 1)} {r.choice(['+', '-', '*', '//', '%'])} {self.num(d + 1)})"
        return r.choice(self.NUM_EXPRS + self.NUMS)

    def lit(self, d):
        r = self.r
        c = r.random()
        if c < 0.35:
            return r.choice(self.STRS)
        if c < 0.6:
            return r.choice(self.NUMS)
        if c < 0.7:
            return r.choice(['true', 'false', 'none', 'True', 'None'])
        if c < 0.85 and d < 3:
            return '[' + ', '.join(self.expr(d + 1) for _ in range(r.randint(0, 3))) + ']'
        if d < 3:
            return '{' + ', '.join(f"{r.choice(self.STRS)}: {self.expr(d + 1)}"
                                   for _ in range(r.randint(0, 3))) + '}'
        return r.choice(self.STRS)

    def expr(self, d=0):
        r = self.r
        c = r.random()
        if d > 3 or c < 0.25:
            return self.var() if r.random() < 0.6 else self.lit(d)
        if c < 0.4:
            return f"{self.expr(d + 1)} | {r.choice(self.FILTERS)}"
        if c < 0.5:
            return f"{self.expr(d + 1)} is {r.choice(['', 'not '])}{r.choice(self.TESTS)}"
        if c < 0.58:
            return f"{self.expr(d + 1)}.{r.choice(self.METHODS)}"
        if c < 0.66:
            return f"({self.num(d + 1)} {r.choice(['+', '-', '*', '/', '//', '%', '<', '>='])} {self.num(d + 1)})"
        if c < 0.75:
            return f"({self.expr(d + 1)} {r.choice(self.OPS)} {self.expr(d + 1)})"
        if c < 0.8:
            return f"not {self.expr(d + 1)}"
        if c < 0.85:
            return f"({self.expr(d + 1)} if {self.expr(d + 1)} else {self.expr(d + 1)})"
        if c < 0.92:
            sub = r.choice(['0', '1', '-1', ':2', '1:', '::-1', "'role'", "'content'"])
            return f"{self.var()}[{sub}]"
        return self.lit(d)

    def ws(self):
        return self.r.choice(['', '', ' ', '\n', '  \n', '\n  ', '\t', 'txt', 'A\n', '\n\n   '])

    def op(self):
        return '{%' + self.r.choice(['', '', '-', '+']) + ' '

    def cl(self):
        return ' ' + self.r.choice(['', '', '-']) + '%}'

    def stmt(self, d=0):
        r, op, cl = self.r, self.op, self.cl
        c = r.random()
        if d > 2 or c < 0.3:
            return (self.ws() + '{{' + r.choice(['', '-']) + ' ' + self.expr() + ' ' +
                    r.choice(['', '-']) + '}}' + self.ws())
        if c < 0.45:
            s = f"{op()}if {self.expr()}{cl()}{self.body(d + 1)}"
            if r.random() < 0.3:
                s += f"{op()}elif {self.expr()}{cl()}{self.body(d + 1)}"
            if r.random() < 0.5:
                s += f"{op()}else{cl()}{self.body(d + 1)}"
            return s + f"{op()}endif{cl()}"
        if c < 0.6:
            it = r.choice(['messages', 'tools', '[1, 2, 3]', "'ab'", "{'k': 1, 'j': 2}",
                           'messages[1:]', 'range(3)', 'm.tool_calls', 'undefined_v'])
            tgt = r.choice(['m', 'm', 'k, v'])
            if tgt == 'k, v':
                it = r.choice(["{'k': 1}.items()", 'messages[0] | items'])
            flt = f" if {self.expr()}" if r.random() < 0.25 else ''
            els = f"{op()}else{cl()}{self.body(d + 1)}" if r.random() < 0.2 else ''
            ctl = ''
            self.in_loop += 1
            inner = self.body(d + 1)
            self.in_loop -= 1
            if r.random() < 0.2:
                ctl = r.choice([f"{op()}if loop.index > 1{cl()}{op()}break{cl()}{op()}endif{cl()}",
                                f"{op()}continue{cl()}"])
            return f"{op()}for {tgt} in {it}{flt}{cl()}{inner}{ctl}{els}{op()}endfor{cl()}"
        if c < 0.72:
            return f"{op()}set {r.choice(['x', 'y', 'm'])} = {self.expr()}{cl()}" + self.ws()
        if c < 0.8:
            return f"{op()}set ns.x = {self.expr()}{cl()}" + self.ws()
        if c < 0.85:
            return self.ws() + '{#' + r.choice(['', '-']) + ' note ' + r.choice(['', '-']) + '#}' + self.ws()
        if c < 0.9:
            return (f"{op()}macro mm(a, b='B'){cl()}[{{{{ a }}}}{{{{ b }}}}]{op()}endmacro{cl()}"
                    f"{{{{ mm({self.expr()}) }}}}")
        return self.ws()

    def body(self, d):
        return ''.join(self.stmt(d) for _ in range(self.r.randint(1, 3)))

    def template(self):
        return "{% set ns = namespace(x=0) %}" + self.body(0)


def fuzz(seed, n, requests):
    warnings.filterwarnings("ignore")
    g = TemplateGen(seed)
    out = []
    for i in range(n):
        t = g.template()
        ri = i % len(requests)
        # a fresh request per render: some jinja filters mutate their input
        r = run_case({"template": t, "request": copy.deepcopy(requests[ri]),
                      "bos": "<s>", "eos": "</s>"})
        r.update({"template": t, "request": ri})
        out.append(r)
    return out


def main(argv):
    if len(argv) >= 3 and argv[1] == "--batch":
        with open(argv[2], encoding="utf-8") as f:
            cases = json.load(f)
        sys.stdout.write(json.dumps([run_case(c) for c in cases], ensure_ascii=True))
        return 0
    if len(argv) >= 5 and argv[1] == "--fuzz":
        reqs = [json.load(open(p, encoding="utf-8")) for p in argv[4:]]
        sys.stdout.write(json.dumps(fuzz(int(argv[2]), int(argv[3]), reqs), ensure_ascii=True))
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
