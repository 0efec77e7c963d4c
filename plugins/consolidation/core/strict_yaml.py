"""YAML as a plan file needs it: strict, bounded, and refused in one readable line.

PyYAML's safe_load keeps the last of two equal keys (a second `steps:` silently replaces
the first), expands aliases without bound (a "billion laughs" file hangs whoever walks the
result) and recurses without a depth limit. load() refuses all three, and files over a size
limit, with a YamlRefused naming the line and the fix.
"""
from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # a plan of a few hundred steps is tens of kB
MAX_NODES = 100_000  # after alias expansion
MAX_DEPTH = 40


class YamlRefused(ValueError):
    """The text is not a YAML document this tool accepts; str() says where and why."""


# libyaml's parser when PyYAML has it (a plan is read by every task: about 8x faster); its
# composer recurses in C, so the nesting depth is checked first on its event stream (flat)
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE):
    pass


def _mapping(loader: _Loader, node: MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise YamlRefused(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first at line {seen[key]}); "
                              "YAML would keep only the last one: remove or rename one of them")
        seen[key] = key_node.start_mark.line + 1
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root: Node) -> None:
    """Expanded node count and depth, computed over the shared graph (linear in its size)."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    active: set[int] = set()
    # iterative post-order walk: the check itself must not recurse on a hostile file
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            depths[key] = 1 + max((depths[id(k)] for k in kids), default=0)
            active.discard(key)
            if sizes[key] > MAX_NODES:
                raise YamlRefused(f"line {node.start_mark.line + 1}: the document expands to more than {MAX_NODES} "
                                  "values through aliases (*name); write the values out or use fewer aliases")
            if depths[key] > MAX_DEPTH:
                raise YamlRefused(f"line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; "
                                  "a plan needs a few levels")
            continue
        if key in sizes:
            continue
        if key in active:
            raise YamlRefused(f"line {node.start_mark.line + 1}: an alias refers to the value that contains it; "
                              "remove the recursive alias")
        active.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in active:
                raise YamlRefused(f"line {kid.start_mark.line + 1}: an alias refers to the value that contains it; "
                                  "remove the recursive alias")
            if id(kid) not in sizes:
                stack.append((kid, False))


_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_depth(text: bytes | str) -> None:
    """Refuse nesting past MAX_DEPTH from the parser's events, before anything recurses on it."""
    depth = 0
    for event in yaml.parse(text, Loader=_BASE):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlRefused(f"line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; "
                                  "a plan needs a few levels")
        elif isinstance(event, _CLOSE):
            depth -= 1


def load(text: bytes | str):
    """The single document in `text`, or YamlRefused."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlRefused(f"{size} bytes is over the limit of {MAX_BYTES}; a plan file is a few kB")
    try:
        _check_depth(text)
    except yaml.YAMLError as exc:
        raise YamlRefused(" ".join(str(exc).split())) from None
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep; a plan needs a few levels") from None
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlRefused(" ".join(str(exc).split())) from None
    finally:
        loader.dispose()
