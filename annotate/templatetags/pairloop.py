"""Model answers are untrusted input: they render as Markdown, and the HTML that comes out is sanitised."""

from __future__ import annotations

import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

register = template.Library()

# Raw HTML in the source is escaped by the parser; nh3 then removes anything unsafe that Markdown itself can
# produce (javascript: links, event attributes), so the result is safe to put in the page.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable("strikethrough")


@register.filter(name="markdown")
def render_markdown(text: str) -> SafeString:
    return mark_safe(nh3.clean(_markdown.render(text or ""), link_rel="noopener noreferrer nofollow"))
