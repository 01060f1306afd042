"""The /docs page: the OpenAPI document rendered to HTML on the server.

Everything is in the HTML as served (routes, parameters, bodies with their schemas, responses,
schemas), so the page reads complete without running a script, in a text browser or a headless
one. Descriptions are Markdown (inline code, bold, links, paragraphs), turned into HTML after
escaping it. One inline script adds a "Try it" form per route that sends the request with
``fetch()`` (a token field sets ``Authorization: Bearer``); the document it needs is embedded in
the page, so nothing else is loaded. No CDN and no external request.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

__all__ = ["markdown", "render_docs"]

#: A code span: `x` (Markdown) or ``x`` (reStructuredText, as Python docstrings write it; the
#: schemas generated from the API's models take their descriptions from docstrings).
_CODE = re.compile(r"``([^`]+)``|`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(((?:https?://|/|#)[^)\s]*)\)")


def _inline(text: str) -> str:
    """Escape ``text`` and turn **bold** and [links](url) into HTML (not inside code)."""
    out = html.escape(text, quote=True)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    return _LINK.sub(r'<a href="\2">\1</a>', out)


def markdown(text: str | None) -> str:
    """The little Markdown the API's descriptions use, as HTML: paragraphs (blank lines),
    `inline code`, **bold** and [links](http... or /path). Everything else is escaped."""
    if not text:
        return ""
    return "".join(f"<p>{_span(block)}</p>" for block in re.split(r"\n\s*\n", text.strip()))


def _span(text: str) -> str:
    """One line or paragraph of Markdown as HTML (no ``<p>``): code spans, bold, links."""
    out, last = [], 0
    for match in _CODE.finditer(text):
        out.append(_inline(text[last : match.start()]))
        out.append(f"<code>{html.escape(match.group(1) or match.group(2))}</code>")
        last = match.end()
    out.append(_inline(text[last:]))
    return "".join(out)


def _resolve(doc: dict[str, Any], schema: Any) -> Any:
    if isinstance(schema, dict) and "$ref" in schema:
        return doc["components"]["schemas"].get(schema["$ref"].rsplit("/", 1)[-1], {})
    return schema if schema is not None else {}


def _ref_name(schema: Any) -> str:
    if isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    return f"<code>{html.escape(json.dumps(schema))}</code>" if schema else ""


def _schema_block(doc: dict[str, Any], schema: Any) -> str:
    """A schema as its description (Markdown), its examples and its JSON."""
    resolved = _resolve(doc, schema)
    parts = []
    if isinstance(resolved, dict):
        parts.append(markdown(resolved.get("description")))
        examples = resolved.get("examples")
        if examples:
            shown = ", ".join(f"<code>{html.escape(json.dumps(e))}</code>" for e in examples)
            parts.append(f"<p>Examples: {shown}</p>")
        rest = {k: v for k, v in resolved.items() if k not in ("description", "examples")}
        if rest:
            parts.append(f"<pre>{html.escape(json.dumps(rest, indent=1))}</pre>")
    if not any(parts):
        parts.append("<p>any JSON value</p>")
    return "".join(parts)


def _params(params: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(p['name'])}</code>{' *' if p.get('required') else ''}</td>"
        f"<td>{html.escape(p.get('in', ''))}</td>"
        f"<td>{_ref_name(p.get('schema'))}</td><td>{markdown(p.get('description'))}</td></tr>"
        for p in params
    )
    return (
        "<table><tr><th>name</th><th>in</th><th>schema</th><th>description</th></tr>"
        f"{rows}</table>"
    )


def _operation(doc: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> str:
    body = []
    if op.get("parameters"):
        body.append("<h4>Parameters</h4>" + _params(op["parameters"]))
    request = op.get("requestBody")
    if request:
        optional = "" if request.get("required") else ", optional"
        for kind, content in (request.get("content") or {}).items():
            body.append(
                f"<h4>Body ({html.escape(kind)}{optional})</h4>"
                f"{markdown(request.get('description'))}"
                f"{_schema_block(doc, content.get('schema'))}"
            )
    rows = []
    for code, response in (op.get("responses") or {}).items():
        content = next(iter((response.get("content") or {}).values()), {})
        rows.append(
            f"<tr><td class=status>{html.escape(code)}</td>"
            f"<td>{markdown(response.get('description'))}</td>"
            f"<td>{_ref_name(content.get('schema'))}</td></tr>"
        )
    body.append(
        "<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>schema</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    body.append(
        f'<div class=try data-path="{html.escape(path)}" data-method="{html.escape(method)}">'
        "</div>"
    )
    return (
        f'<details class=op id="op-{html.escape(op.get("operationId", ""))}"><summary>'
        f'<span class="m {html.escape(method)}">{html.escape(method.upper())}</span>'
        f"<span class=path>{html.escape(path)}</span>"
        f"<span class=sum>{_span(op.get('summary', ''))}</span></summary>"
        f"<div class=body>{''.join(body)}</div></details>"
    )


def render_docs(doc: dict[str, Any]) -> str:
    """The whole page for the OpenAPI document ``doc``."""
    ops = [
        _operation(doc, path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
    ]
    for path, ws in (doc.get("x-websockets") or {}).items():
        params = _params(ws["parameters"]) if ws.get("parameters") else ""
        ops.append(
            "<details class=op><summary><span class='m ws'>WS</span>"
            f"<span class=path>{html.escape(path)}</span>"
            f"<span class=sum>{_span(ws.get('summary', ''))}</span></summary>"
            f"<div class=body>{markdown(ws.get('summary'))}{params}</div></details>"
        )
    schemas = "".join(
        f'<details class=op id="schema-{html.escape(name)}"><summary><span class=path>'
        f"{html.escape(name)}</span></summary><div class=body>{_schema_block(doc, schema)}"
        "</div></details>"
        for name, schema in doc["components"]["schemas"].items()
    )
    embedded = json.dumps(doc).replace("<", "\\u003c")
    info = doc.get("info", {})
    return (
        _HEAD
        + f"<header><h1>Flux API</h1><span>version {html.escape(str(info.get('version')))}"
        "</span><label>API token <input id=token type=password autocomplete=off "
        'placeholder="only if the server requires one"></label>'
        '<a href="openapi.json">openapi.json</a></header>'
        f"<main>{markdown(info.get('description'))}<h2>Routes</h2>{''.join(ops)}"
        f"<h2>Schemas</h2>{schemas}</main>"
        f'<script type="application/json" id=spec>{embedded}</script>'
        f"<script>{_SCRIPT}</script></body></html>"
    )


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flux API</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:12px 20px;display:flex;gap:16px;align-items:center}
header h1{font-size:18px;margin:0} header input{width:280px;padding:4px 6px}
header a{color:#cfe3ff} main{max-width:1100px;margin:0 auto;padding:12px 20px}
.op{background:#fff;border:1px solid #d9dde3;border-radius:6px;margin:8px 0}
.op>summary{cursor:pointer;padding:8px 12px;display:flex;gap:12px;align-items:baseline}
.m{font:bold 12px monospace;padding:2px 8px;border-radius:3px;color:#fff;min-width:54px;
text-align:center}.get{background:#2f7ab9}.post{background:#3a9a5b}.delete{background:#c0463c}
.ws{background:#7a5bb5}.path{font-family:monospace;font-weight:600}.sum{color:#555}
.body{padding:4px 16px 12px;border-top:1px solid #eef0f3}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #e3e6ea;padding:3px 8px;
text-align:left;vertical-align:top}td p{margin:0}pre{background:#f0f2f5;padding:8px;
overflow:auto;max-height:320px;margin:4px 0}code{background:#eef0f3;padding:0 3px;
border-radius:3px}textarea{width:100%;min-height:60px;font-family:monospace}
button{padding:4px 14px;cursor:pointer}.status{font-weight:bold}
</style></head><body>
"""

# Adds the "Try it" forms; the page is complete without it.
_SCRIPT = """
"use strict";
const SPEC = JSON.parse(document.getElementById("spec").textContent);
const $ = (tag, attrs = {}, ...kids) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const kid of kids) el.append(kid);
  return el;
};
function tryForm(path, method, op) {
  const form = $("div");
  const inputs = {};
  for (const p of op.parameters || []) {
    const i = $("input", {placeholder: p.name});
    inputs[p.name] = [p, i];
    form.append($("label", {}, p.name + " (" + p.in + ") "), i, $("br"));
  }
  let bodyBox = null, fileBox = null;
  const content = (op.requestBody || {}).content || {};
  if (content["application/json"]) {
    bodyBox = $("textarea", {placeholder: "JSON body"});
    form.append(bodyBox);
  } else if (content["multipart/form-data"]) {
    fileBox = $("input", {type: "file"});
    form.append($("label", {}, "file "), fileBox, $("br"));
  }
  const out = $("pre");
  const go = $("button", {}, "Send");
  go.onclick = async () => {
    let url = path.replace(/^\\//, "");
    const query = new URLSearchParams();
    for (const [name, [p, i]] of Object.entries(inputs)) {
      if (p.in === "path") url = url.replace("{" + name + "}", encodeURIComponent(i.value));
      else if (i.value !== "") query.set(name, i.value);
    }
    if ([...query].length) url += "?" + query;
    const init = {method: method.toUpperCase(), headers: {}};
    const token = document.getElementById("token").value;
    if (token) init.headers["Authorization"] = "Bearer " + token;
    if (bodyBox && bodyBox.value.trim()) {
      init.headers["Content-Type"] = "application/json";
      init.body = bodyBox.value;
    }
    if (fileBox && fileBox.files.length) {
      const data = new FormData(); data.append("file", fileBox.files[0]); init.body = data;
    }
    out.textContent = method.toUpperCase() + " /" + url + " ...";
    try {
      const r = await fetch(url || ".", init);
      const text = await r.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 1); } catch (e) { /* as is */ }
      out.textContent = r.status + " " + r.statusText + "\\n" + shown;
    } catch (e) { out.textContent = "request failed: " + e; }
  };
  form.append(go, out);
  return form;
}
for (const box of document.querySelectorAll("div.try")) {
  const op = SPEC.paths[box.dataset.path][box.dataset.method];
  box.append($("h4", {}, "Try it"), tryForm(box.dataset.path, box.dataset.method, op));
}
"""
