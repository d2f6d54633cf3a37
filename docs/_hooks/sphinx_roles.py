"""An mkdocs hook: the docstrings cross-reference in Sphinx's roles (``:class:`~a.b.C```), which mkdocstrings
leaves as text; show them as plain code, ``~`` keeping the last name only, as Sphinx would."""
import re

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc):<code>(~?)([^<]*)</code>")


def on_page_content(html, **kwargs):
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
