"""Model answers are untrusted input: they render as Markdown, and the HTML that comes out is sanitised.

Nothing in the result may make the browser load anything: an image becomes a link carrying its alt text (followed
only when clicked), raw HTML in the source is escaped by the parser, and nh3 keeps only the tags Markdown itself
produces, with safe link schemes. The Content-Security-Policy (settings.py) is the second line behind this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nh3
from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

register = template.Library()

# What CommonMark with tables and strikethrough produces, minus <img>.
MARKDOWN_TAGS = {
    "p", "br", "hr", "em", "strong", "s", "code", "pre", "blockquote", "a", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
MARKDOWN_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}


def _image_as_link(
    renderer: RendererHTML, tokens: Sequence[Token], index: int, options: OptionsDict, env: EnvType
) -> str:
    """`![alt](url)` as a link to the image, its alt text (or the address) as the link's text."""
    token = tokens[index]
    source = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env) or source
    return f'<a href="{escape(source)}">{escape(alt)}</a>'


_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable("strikethrough")
_markdown.add_render_rule("image", _image_as_link)


def markdown_to_safe_html(text: str) -> str:
    html: Any = _markdown.render(text or "")
    return nh3.clean(html, tags=MARKDOWN_TAGS, attributes=MARKDOWN_ATTRIBUTES, link_rel="noopener noreferrer nofollow")


@register.filter(name="markdown")
def render_markdown(text: str) -> SafeString:
    return mark_safe(markdown_to_safe_html(text))
