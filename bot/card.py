"""The texts a maintainer reads: the model-card section, the PR title and description; README editing.

A README belongs to its maintainer, so editing it may only ever add: the bytes between our markers are replaced (or
the section is appended) and `onnx` / `torchscript` are added to the YAML front matter's `tags`; every other byte
stays as it was. Whenever that cannot be guaranteed (an orphan or duplicated marker, front matter that does not parse
or whose `tags` cannot be extended without touching other metadata) the README is left byte-identical and the reason
is returned for the PR description to show. Untrusted strings reach the templates raw and are escaped there, by the
markdown filters of bot.render.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.manifest import library_versions
from bot.render import human_size, md_code, md_text, one_line, render_template
from bot.usage import usage_context

START, END = "<!-- hub-export-bot:start -->", "<!-- hub-export-bot:end -->"
CARD_TEMPLATE, PR_TEMPLATE = "model_card_section.md.j2", "pr_description.md.j2"
USAGE_TEMPLATE = "usage.md.j2"  # how to load the files with each client, shown by both
VARIANTS_TEMPLATE = "variants.md.j2"  # the dtype variants (fp16, q8, q4) and their quality gates, shown by both
PR_TITLE = "Add validated ONNX and TorchScript exports (hub-export-bot)"
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def _render(name: str, context: dict, override: Path | None = None) -> str:
    return render_template(name, context, override)


def _artifact_row(artifact) -> dict:
    worst = max(artifact.validation.max_abs_diff.values(), default=0.0)
    return {"feature": artifact.feature, "format": artifact.format, "format_name": _FORMAT_NAMES[artifact.format],
            "path": artifact.path, "size": human_size(artifact.size), "inputs": artifact.inputs,
            "outputs": artifact.outputs, "max_diff": f"{worst:.2g}", "atol": f"{artifact.validation.atol:g}",
            "exporter": artifact.exporter,
            # a TorchScript file of several graphs: each submodule's inputs and outputs
            "submodules": [{"name": s.component, "inputs": s.inputs, "outputs": s.outputs}
                           for s in getattr(artifact, "submodules", [])]}


def _failure_row(failure) -> dict:
    report = failure.validation
    worst = max(report.max_abs_diff.values(), default=0.0) if report else None
    return {"feature": failure.feature, "format_name": _FORMAT_NAMES[failure.format],
            "error": _shorten(one_line(failure.error), 200),
            "max_diff": f"{worst:.2g}" if worst is not None else "—", "atol": f"{report.atol:g}" if report else "—"}


def _shorten(text: str, limit: int) -> str:
    """Cut before escaping, so a cut never splits an escape (a lone trailing backslash would escape a cell's `|`)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def context(result, repo_id: str, *, source_url: str | None = None, trigger: str = "cli",
            pr_ref: str | None = None, has_tokenizer: bool = False, readme_note: str | None = None) -> dict:
    """Everything the templates may use, built from an ExportResult. Strings are raw: templates escape them.

    `readme_note` is ReadmeEdit.reason when README.md was left as it is (markdown, safe to show as is)."""
    order = {"onnx": 0, "torchscript": 1}
    added = sum(a.size for a in result.artifacts)  # every file of every format and dtype: what merging downloads
    variants = [a for a in result.artifacts if _dtype(a) != "fp32"]
    if variants:  # the tables and snippets above the variants are about the fp32 graphs
        result = copy.copy(result)
        result.artifacts = [a for a in result.artifacts if _dtype(a) == "fp32"]
    ranked = sorted(result.artifacts, key=lambda a: (a.feature != result.primary, a.feature, order[a.format], a.path))
    artifacts = [_artifact_row(a) for a in ranked]
    usage = usage_context(result, repo_id, has_tokenizer)
    shapes = sorted({shape for a in result.artifacts for graph in getattr(a, "submodules", []) or [a]
                     for shape in graph.validation.to_dict()["shapes_tried"]})
    variant_data = {"variants": _variant_rows(result, variants), "refused": _refused_rows(result)}
    return {
        "repo_id": repo_id, "revision": result.revision, "artifacts": artifacts,
        "failures": [_failure_row(f) for f in result.failures], "skipped": result.skipped,
        "usage": usage, "usage_section": _render(USAGE_TEMPLATE, {"usage": usage}).strip(),
        "versions": library_versions(), "source_url": source_url, "trigger": trigger, "pr_ref": pr_ref,
        "shapes": "; ".join(shapes), "has_tokenizer": has_tokenizer, "tags": card_tags(result),
        "readme_note": readme_note, **variant_data, "added_size": human_size(added),
        "added_ratio": f"{added / result.weights_size:.2f}x" if result.weights_size else None,
        "weights_size": human_size(result.weights_size),
        "variants_section": _render(VARIANTS_TEMPLATE, variant_data).strip(),
        # what merging changes; publish fills these from its plan (bot.manifest.PublishPlan.description_data)
        "changes": {"added": [], "replaced": [], "removed": [], "edited": []}, "only_adds": True, "withheld": [],
        "config_diff": None,  # publish: the `transformers.js_config` keys added to config.json (bot.jsconfig)
    }


def _dtype(artifact) -> str:
    return getattr(artifact, "dtype", "fp32")


def _variant_rows(result, variants: list) -> list[dict]:
    """One row per published (feature, dtype): its files, size against fp32, gate figures and how to load it."""
    from bot.layout import DTYPE_SUFFIXES, MODEL, stem

    dtypes = list(DTYPE_SUFFIXES)
    fp32 = {(a.feature, a.component): a.size for a in result.artifacts if a.format == "onnx"}
    groups: dict[tuple[str, str], list] = {}
    for a in variants:
        groups.setdefault((a.feature, _dtype(a)), []).append(a)
    rows = []
    for (feature, dtype), group in sorted(groups.items(), key=lambda item: (item[0][0] != result.primary,
                                                                             item[0][0], dtypes.index(item[0][1]))):
        size = sum(a.size for a in group)
        base = sum(fp32.get((a.feature, a.component), 0) for a in group)
        gate = getattr(group[0].validation, "gate", None)
        earlier = getattr(group[0].validation, "earlier", [])
        single = [a.component for a in group] == [MODEL]
        if feature == result.primary:
            tjs = f'{{ dtype: "{dtype}" }}'
        elif single:
            tjs = f'{{ model_file_name: "{stem(feature, MODEL, result.primary)}", dtype: "{dtype}" }}'
        else:
            tjs = None  # transformers.js has no file-name option for encoder-decoders
        rows.append({"feature": feature, "dtype": dtype, "files": [a.path for a in group],
                     "size": human_size(size), "ratio": f"{size / base:.0%}" if base else "—",
                     "recipe": gate.recipe if gate else "", "quality": _quality(gate),
                     "refused_recipes": [g.summary() for g in earlier], "tjs": tjs})
    return rows


def _quality(gate) -> str:
    """The gate's figures, e.g. `min cosine 0.9991 (≥ 0.99)` (4 decimals, never rounded towards the bound)."""
    if gate is None:
        return ""
    return ", ".join(c.describe().replace(" >= ", " (≥ ").replace(" <= ", " (≤ ") + ")" for c in gate.criteria)


def _refused_rows(result) -> list[dict]:
    return [{"feature": r.feature, "dtype": r.dtype, "reason": _shorten(one_line(r.reason), 300)}
            for r in getattr(result, "refused", [])]


def card_tags(result) -> list[str]:
    return sorted({a.format for a in result.artifacts})


def render_card_section(ctx: dict, template: Path | None = None) -> str:
    return _render(CARD_TEMPLATE, ctx, template)


def render_pr_description(ctx: dict) -> str:
    return _render(PR_TEMPLATE, ctx)


# -- README.md -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadmeEdit:
    """README.md to commit, or None and why it is left as it is.

    Refusing is the safe answer whenever the bot cannot tell its own bytes from the maintainer's: a wrong guess
    there deletes their text or corrupts their metadata. `reason` is markdown, safe to show as is (untrusted parts
    are escaped), written for the maintainer reading the PR description.
    """

    text: str | None
    reason: str | None = None


def edit_readme(readme: str | None, section: str, tags: list[str]) -> ReadmeEdit:
    """README.md with our section between the markers (replacing the earlier one) and `tags` added, in one pass."""
    if readme is None:
        return ReadmeEdit(_new_front_matter(tags, "\n") + "\n" + _block(section, "\n") + "\n")
    bom = "\ufeff" if readme.startswith("\ufeff") else ""  # kept in front of everything, where it belongs
    text = readme[len(bom):]
    newline = "\r\n" if "\r\n" in text[:text.find("\n") + 1] else "\n"
    front = _FRONT_MATTER.match(text)
    if front is None:
        head, body, body_line = _new_front_matter(tags, newline), text, 1
    else:
        yaml_text, problem = _add_tags(front.group("yaml"), tags, newline,
                                       first_line=front.group("open").count("\n") + 1)
        if problem:
            return ReadmeEdit(None, f"README.md was left as it is: {problem}.")
        head, body = front.group("open") + yaml_text + front.group("close"), text[front.end():]
        body_line = front.group(0).count("\n") + 1
    body, problem = _splice_section(body, _block(section, newline), newline, body_line)
    if problem:
        return ReadmeEdit(None, f"README.md was left as it is: {problem}.")
    return ReadmeEdit(bom + head + body)


def splice_readme(readme: str | None, section: str, tags: list[str]) -> str:
    """README.md to commit: edit_readme's text, or the README unchanged when edit_readme refuses (it says why)."""
    edit = edit_readme(readme, section, tags)
    return edit.text if edit.text is not None else readme


def _block(section: str, newline: str) -> str:
    body = section.strip().replace("\r\n", "\n").replace("\n", newline)
    return f"{START}{newline}{body}{newline}{END}"


def _new_front_matter(tags: list[str], newline: str) -> str:
    return f"---{newline}tags:{newline}" + "".join(f"- {_yaml_item(t)}{newline}" for t in tags) + f"---{newline}"


# -- the section between the markers ---------------------------------------------------------------------------------

# The lines that matter, found by one regex pass: code fence lines and marker lines. A marker counts only on a line
# of its own, outside fenced code and indented less than 4 columns (4 or more is indented code, or a list item's
# text, where a maintainer quotes markers, not places them).
_LINES = re.compile(r"^(?P<indent>[ \t]*)(?:(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)"
                    r"|(?P<marker>" + re.escape(START) + "|" + re.escape(END) + r")[ \t]*\r?)$", re.MULTILINE)


def _markers(body: str) -> tuple[list[re.Match], list[re.Match]]:
    """The start and end marker lines outside code blocks, following CommonMark's fence rules."""
    starts: list[re.Match] = []
    ends: list[re.Match] = []
    fence = None
    for line in _LINES.finditer(body):
        indent = line.group("indent")
        if line.group("fence"):
            run, info = line.group("fence"), line.group("info")
            if indent != " " * len(indent) or len(indent) > 3:
                continue  # indented code, not a fence
            if fence is None:
                if not (run[0] == "`" and "`" in info):  # a backtick fence's info string has no backticks
                    fence = run
            elif run[0] == fence[0] and len(run) >= len(fence) and not info.strip(" \t\r"):
                fence = None
        elif fence is None and len(indent.expandtabs(4)) < 4:
            (starts if line.group("marker") == START else ends).append(line)
    return starts, ends


def _splice_section(body: str, block: str, newline: str, first_line: int) -> tuple[str | None, str | None]:
    """(body with the block in place, None), or (None, why) when the markers are not exactly one pair in order."""
    starts, ends = _markers(body)
    if not starts and not ends:
        separator = "" if body.endswith("\n") or not body else newline
        return body + separator + (newline if body.strip() else "") + block + newline, None
    if len(starts) == 1 and len(ends) == 1 and starts[0].start() < ends[0].start():
        return body[:starts[0].start("marker")] + block + body[ends[0].end("marker"):], None

    def lines(found: list[re.Match]) -> str:
        numbers = [str(first_line + body.count("\n", 0, m.start())) for m in found[:5]]
        return ", ".join(numbers) + (f" and {len(found) - 5} more" if len(found) > 5 else "") if found else "none"

    return None, (f"its hub-export-bot markers outside code blocks are not one start line followed by one end line "
                  f"(`{START}` on lines: {lines(starts)}; `{END}` on lines: {lines(ends)}), so the bot cannot tell "
                  f"its section from your text. Keep exactly one pair around the section, or delete both to have it "
                  f"appended, and the next export will update it")


# -- the YAML front matter -------------------------------------------------------------------------------------------

# As huggingface_hub reads it: optional blank lines, a `---` line, the YAML, a `---` line.
_FRONT_MATTER = re.compile(r"(?P<open>\s*---[ \t]*\r?\n)(?P<yaml>(?:.*?\r?\n)?)(?P<close>---[ \t]*(?:\r?\n|$))",
                           re.DOTALL)
_NULL, _STR = "tag:yaml.org,2002:null", "tag:yaml.org,2002:str"


def _add_tags(text: str, tags: list[str], newline: str, first_line: int) -> tuple[str | None, str | None]:
    """(the YAML with the missing tags added, None) or (None, why not).

    PyYAML only reads: its node marks say where `tags` and its items are, the edit is a text insertion there (so
    comments, quoting, order and spacing elsewhere stay byte-identical), and the result is parsed again and must
    hold the same metadata plus our tags, or nothing is changed.
    """
    try:
        root = _compose(text)
        if root is not None and (not isinstance(root, yaml.MappingNode) or root.flow_style):
            return None, "its YAML front matter is not a block mapping of keys to values"
        duplicate = _duplicate_key(root)
        if duplicate is not None:
            return None, (f"its YAML front matter has the key {md_code(duplicate.value)} more than once (line "
                          f"{first_line + duplicate.start_mark.line}), which YAML forbids; keep one")
        entries = [(key, value) for key, value in (root.value if root is not None else []) if _is_tags(key)]
        value = entries[0][1] if entries else None
        if value is not None and value.start_mark.index < entries[0][0].end_mark.index:
            return None, "`tags` in its YAML front matter is an alias (`*name`); write the list out to get our tags"
        if value is not None and isinstance(value, yaml.MappingNode):
            return None, "`tags` in its YAML front matter is a mapping, not a list of tags"
        kept = _kept_items(value)
        missing = [t for t in tags if t not in {item.value for item in kept if isinstance(item, yaml.ScalarNode)}]
        if not missing:
            return text, None
        for candidate in _tag_edits(text, root, value, missing, newline):
            if _verified(root, _compose(candidate), kept, missing):
                return candidate, None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {first_line + mark.line}: " if mark is not None else ""
        return None, (f"its YAML front matter does not parse ({where}{md_text(getattr(exc, 'problem', None) or exc)}), "
                      f"and the bot changes nothing in a README whose metadata it cannot read; fix the YAML")
    except RecursionError:
        return None, "its YAML front matter is nested too deeply to check"
    return None, "`tags` could not be added to its YAML front matter without changing other metadata"


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _is_tags(key: yaml.Node) -> bool:
    return isinstance(key, yaml.ScalarNode) and key.tag == _STR and key.value == "tags"


def _kept_items(value: yaml.Node | None) -> list[yaml.Node]:
    """The maintainer's tags, which stay first: a list's items, or a single tag (a scalar) as a list of one."""
    if isinstance(value, yaml.SequenceNode):
        return list(value.value)
    if isinstance(value, yaml.ScalarNode) and value.tag != _NULL:
        return [value]
    return []


def _tag_edits(text: str, root, value, missing: list[str], newline: str):
    """Candidate edits of the YAML text, most faithful first; each is verified before it is used."""
    items = [_yaml_item(t) for t in missing]
    if value is None:  # no `tags` key: a block list at the end, indented like the other keys
        indent = " " * (root.start_mark.column if root is not None else 0)
        yield text + f"{indent}tags:{newline}" + "".join(f"{indent}- {item}{newline}" for item in items)
    elif isinstance(value, yaml.SequenceNode) and value.flow_style:  # [a, b] stays flow style
        end = value.end_mark.index
        if value.value:
            at = value.value[-1].end_mark.index
            yield text[:at] + ", " + ", ".join(items) + text[at:]
        elif text[end - 1:end] == "]":
            yield text[:end - 1] + ", ".join(items) + text[end - 1:]
    elif isinstance(value, yaml.SequenceNode):  # block list: new lines after the last item, with its prefix
        last = value.value[-1]
        line_start = text.rfind("\n", 0, last.start_mark.index) + 1
        prefix = text[line_start:last.start_mark.index]
        if not re.fullmatch(r"[ \t]*-[ \t]+", prefix):
            prefix = " " * value.start_mark.column + "- "
        end = last.end_mark.index
        at = end if text[end - 1:end] == "\n" else text.find("\n", end) + 1 or len(text)
        yield text[:at] + "".join(f"{prefix}{item}{newline}" for item in items) + text[at:]
    elif isinstance(value, yaml.ScalarNode):  # a single tag becomes a flow list that keeps it first
        start, end = value.start_mark.index, value.end_mark.index
        source = text[start:end]
        trail = newline if source.endswith("\n") else ""  # a block scalar's span ends with its line
        space = " " if start == end else ""  # `tags:` with nothing after it
        if value.tag == _NULL:
            firsts = [[]]
        else:  # the maintainer's own spelling if it reads the same inside [...], else its value re-quoted
            firsts = ([[source]] if "\n" not in source else []) + [[_json(value.value)]]
        for first in firsts:
            yield text[:start] + space + "[" + ", ".join(first + items) + "]" + trail + text[end:]


def _verified(old, new, kept: list[yaml.Node], missing: list[str]) -> bool:
    """Whether `new` holds exactly `old`'s metadata, with `tags` = the kept items followed by the missing tags."""
    if not isinstance(new, yaml.MappingNode):
        return False
    others = [(k, v) for k, v in (old.value if old is not None else []) if not _is_tags(k)]
    new_others = [(k, v) for k, v in new.value if not _is_tags(k)]
    new_tags = [v for k, v in new.value if _is_tags(k)]
    seen: set = set()
    if len(others) != len(new_others) or len(new_tags) != 1 or not isinstance(new_tags[0], yaml.SequenceNode):
        return False
    if not all(_same(a, c, seen) and _same(b, d, seen) for (a, b), (c, d) in zip(others, new_others)):
        return False
    items = new_tags[0].value
    return (len(items) == len(kept) + len(missing) and all(_same(a, b, seen) for a, b in zip(kept, items))
            and all(isinstance(i, yaml.ScalarNode) and i.tag == _STR and i.value == t
                    for i, t in zip(items[len(kept):], missing)))


def _same(a: yaml.Node, b: yaml.Node, seen: set) -> bool:
    """Same data, node by node (aliases are shared nodes: each pair is compared once, so this stays linear)."""
    if (id(a), id(b)) in seen:
        return True
    seen.add((id(a), id(b)))
    if type(a) is not type(b) or a.tag != b.tag:
        return False
    if isinstance(a, yaml.ScalarNode):
        return a.value == b.value
    if isinstance(a, yaml.MappingNode):
        return len(a.value) == len(b.value) and all(
            _same(k1, k2, seen) and _same(v1, v2, seen) for (k1, v1), (k2, v2) in zip(a.value, b.value))
    return len(a.value) == len(b.value) and all(_same(x, y, seen) for x, y in zip(a.value, b.value))


def _duplicate_key(root: yaml.Node | None) -> yaml.Node | None:
    """The first key that occurs twice in one mapping: PyYAML keeps the last silently, the Hub rejects the card."""
    pending, visited = [root] if root is not None else [], set()
    while pending:
        node = pending.pop()
        if id(node) in visited or isinstance(node, yaml.ScalarNode):
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, key.value) in keys:
                        return key
                    keys.add((key.tag, key.value))
                pending += [key, value]
        else:
            pending += node.value
    return None


def _yaml_item(tag: str) -> str:
    """A tag as a YAML list item: plain when YAML reads it back as that string, else double-quoted."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9._/-]*", tag) and yaml.safe_load(tag) == tag:
        return tag
    return _json(tag)


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)  # a JSON string is a YAML double-quoted scalar
